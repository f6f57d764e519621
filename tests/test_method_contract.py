"""The method contract, for every registered method with no edit per method: its tiny configuration
trains from the command line (two steps in the first stage, one in the others; stopped after the first
and resumed), exports and reloads, and
derains a real photo in tiles; the flags come from its configuration dataclass."""

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from erl_derain import config as cfglib
from erl_derain.methods import discover

from .conftest import make_folder_dataset, shared_data_dir, write_png

METHODS = sorted(discover())
PHOTO = "147.jpg"  # the smallest real photo of the shared set (253x199)


def tiny_flags(spec) -> list[str]:
    """The spec's tiny configuration as command-line flags, generated from the dataclass."""
    fields = {f.name: f for f in cfglib.fields_of(spec.config_class)}
    out = []
    for name, value in spec.tiny.items():
        flag = cfglib.flag_name(fields[name], spec.flag_prefix)
        if isinstance(value, bool):
            out.append(f"--{flag}" if value else f"--no{flag}")
        elif isinstance(value, (list, tuple)):
            out.append(f"--{flag}={','.join(str(v) for v in value)}")
        else:
            out.append(f"--{flag}={value}")
    return out


def stream_flags(spec, tmp_path) -> list[str]:
    """Folders of images for the method's own input streams (e.g. unpaired real rain)."""
    out = []
    rng = np.random.default_rng(3)
    for stream in spec.streams:
        folder = tmp_path / f"stream_{stream.key}"
        for i in range(2):
            write_png(folder / f"s{i}.png", rng.random((spec.tiny_crop * 2, spec.tiny_crop * 2, 3)))
        out.append(f"--{spec.flag_prefix}{stream.source_setting}={folder}")
    return out


@pytest.mark.parametrize("method", METHODS)
def test_a_method_trains_resumes_exports_and_derains_by_its_contract(method, run_cli, tmp_path):
    spec = discover()[method]
    assert spec.tiny, f"{method}: its MethodSpec has no tiny configuration"
    crop = spec.tiny_crop
    data = make_folder_dataset(tmp_path / "data", n=2, size=(crop, crop))
    model_dir = tmp_path / "run"
    from erl_derain.methods import make_trainer
    from erl_derain.run_config import make_record

    stages = len(make_trainer(make_record(method, **dict(spec.tiny))).stages)
    steps = ",".join(["2"] + ["1"] * (stages - 1))  # two steps in the first stage: stop after one
    args = ["train", f"--method={method}", f"--model_dir={model_dir}", f"--dataset=folder:{data}",
            f"--crop_size={crop}", "--batch_size=2", f"--stage_steps={steps}", "--jit_compile=false",
            "--noevaluate_after", *tiny_flags(spec), *stream_flags(spec, tmp_path)]
    code, out, err = run_cli(*args, "--stop_after=1")  # stopped after the first step...
    assert code == 0, err
    assert "Stopped after 1 steps" in out
    code, out, err = run_cli(*args)  # ...and resumed by the same command
    assert code == 0, err
    assert "Resuming" in out and "step 1" in out
    config = json.loads((model_dir / "config.json").read_text())
    assert config["format"] == 2 and config["method"] == method
    assert set(config["method_config"]) == {f.name for f in cfglib.fields_of(spec.config_class)}

    from erl_derain.training import load_trainer

    trainer, record = load_trainer(str(model_dir))
    model = trainer.inference_model()
    assert model.pad_multiple == trainer.pad_multiple
    x = tf.random.stateless_uniform((1, 21, 27, 3), seed=[1, 2])  # not a multiple of anything
    y = model(x).numpy()
    assert y.shape == (1, 21, 27, 3) and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1

    export_base = tmp_path / "export" / method
    code, out, err = run_cli("export", f"--model_dir={model_dir}", f"--export_base={export_base}")
    assert code == 0, err
    served = tf.saved_model.load(str(export_base / "1")).signatures["serving_default"]
    np.testing.assert_allclose(served(images=x)["derained"].numpy(), y, atol=1e-5)

    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is absent: the real-photo part needs it")
    photo = shared / "real_rain" / PHOTO
    out_dir = tmp_path / "derained"
    code, out, err = run_cli("derain", f"--model_dir={model_dir}", f"--output_dir={out_dir}", "--tile=128",
                             "--tile_overlap=16", str(photo))
    assert code == 0, err
    assert "2x3 tiles" in out  # 253x199 in 128-pixel tiles overlapping by at least 16
    result = cv2.imread(str(out_dir / (os.path.splitext(PHOTO)[0] + ".png")))
    assert result.shape == cv2.imread(str(photo)).shape


def test_every_method_has_its_flags_and_help(capsys):
    """Each method's flags exist with their prefix; `train --help --method=<name>` lists them with defaults."""
    from absl import flags

    from erl_derain import cli

    for name, spec in discover().items():
        names = cfglib.flag_names(spec.config_class, spec.flag_prefix)
        for flag in names.values():
            assert flag in flags.FLAGS, f"{name}: --{flag} is not defined"
        text = cli.help_text("train", name)
        for flag in names.values():
            assert f"--{flag}" in text
    assert all(v in cli.help_text() for v in cli.verbs())
