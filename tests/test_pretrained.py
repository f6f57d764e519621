"""The bundled pretrained model: checksum, loading, derain without --model_dir, export --pretrained,
and its quality on real benchmark pairs it has never seen."""

import json
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf

from erl_derain import pretrained
from erl_derain.inference import derain_image

from .conftest import shared_data_dir


def test_bundled_weights_load_and_match_their_checksum():
    info = pretrained.read_info()
    _, weights = pretrained.paths()
    assert pretrained.sha256_of(weights) == info["sha256"]
    import erl_derain

    model = erl_derain.load_pretrained()
    x = tf.random.uniform((1, 24, 40, 3), seed=0)
    from erl_derain.inference import apply_padded

    y = apply_padded(model, x, model.pad_multiple)
    assert y.shape == x.shape
    assert info["parameters"] == sum(int(np.prod(v.shape)) for v in model.weights)


def test_a_damaged_weights_file_is_a_clear_error(tmp_path):
    for name in ("json", "npz"):
        shutil.copy(f"{pretrained.HERE}/{pretrained.DEFAULT}.{name}", tmp_path)
    npz = tmp_path / f"{pretrained.DEFAULT}.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="damaged.*reinstall"):
        pretrained.load_pretrained(directory=str(tmp_path))
    (tmp_path / f"{pretrained.DEFAULT}.json").unlink()
    with pytest.raises(pretrained.PretrainedError, match="missing"):
        pretrained.load_pretrained(directory=str(tmp_path))


def test_derain_without_model_dir_uses_the_bundled_model(run_cli, tmp_path):
    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is absent")
    photo = shared / "real_rain" / "2.jpg"
    code, out, err = run_cli("derain", f"--output_dir={tmp_path / 'out'}", str(photo))
    assert code == 0, err
    assert "bundled pretrained model" in out
    result = cv2.imread(str(tmp_path / "out" / "2.png"))
    assert result.shape == cv2.imread(str(photo)).shape
    code, _, err = run_cli("export", "--pretrained", f"--export_base={tmp_path / 'exp' / 'erlnet'}")
    assert code == 0, err
    assert (tmp_path / "exp" / "erlnet" / "1" / "saved_model.pb").exists()


def test_bundled_model_improves_heavy_rain_pairs_it_never_saw():
    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is absent")
    from erl_derain import metrics
    from erl_derain.data.image_io import load_rgb

    model = pretrained.load_pretrained()
    folder = shared / "jorder_e_small"
    before, after = [], []
    for rainy_path in sorted((folder / "rain").glob("norain-*.png")):
        rainy, clean = load_rgb(str(rainy_path)), load_rgb(str(folder / "norain" / rainy_path.name))
        before.append(metrics.psnr_y(rainy, clean))
        after.append(metrics.psnr_y(derain_image(model, rainy, model.pad_multiple, tile=0), clean))
    assert len(before) == 5
    assert np.mean(after) > np.mean(before)


def test_package_a_fine_tune_and_load_it(tmp_path):
    """``package`` writes a run's de-raining network with its checksum; ``load_pretrained`` rebuilds the
    same function. A run started with ``--init_from`` records the configuration of the run it started
    from, and the card describes both schedules."""
    import keras

    from erl_derain import training
    from erl_derain.data import pipelines
    from erl_derain.methods import make_trainer
    from erl_derain.pretrained import card, package

    from .conftest import make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", n=3, size=(24, 24))
    sizes = {"method": "erlnet", "erl_strategy": "ma_d", "widths": [8, 16], "bottleneck_width": 16,
             "dense_layers": 2, "growth": 8, "se_ratio": 2, "dataset": f"folder:{data}", "crop_size": 16,
             "batch_size": 2}
    base = {**sizes, "stage_steps": ["1", "1", "1"], "lr": 4e-4}
    tune = {**sizes, "stage_steps": ["0", "0", "2"], "lr": 1e-4, "lr_decay_steps": ["1"], "lr_decay_factor": 0.25,
            "init_from": str(tmp_path / "base")}
    for name, cfg in (("base", base), ("tune", tune)):
        keras.utils.set_random_seed(0)
        training.train(make_trainer(cfg), cfg, lambda start: pipelines.paired_dataset(
            f"folder:{data}", "train", batch_size=2, crop_size=16, seed=3, start_index=start),
            model_dir=str(tmp_path / name), stage_steps=[int(s) for s in cfg["stage_steps"]], batch_size=2,
            jit_compile="false", verbose=0, init_from=cfg.get("init_from"))
    out = tmp_path / "pkg"
    out.mkdir()
    info_path, weights_path = package.package(str(tmp_path / "tune"), "tiny", str(out), {"train_seconds": 60.0})
    info = json.loads(open(info_path).read())
    assert info["sha256"] == pretrained.sha256_of(weights_path) and info["train_seconds"] == 60.0
    assert info["init_config"]["run"]["stage_steps"] == [1, 1, 1] and info["config"]["run"]["init_from"].endswith("base")
    trainer, _ = training.load_trainer(str(tmp_path / "tune"))
    model = pretrained.load_pretrained("tiny", str(out))
    x = tf.random.uniform((1, 16, 24, 3), seed=1)
    np.testing.assert_allclose(model(x).numpy(), trainer.inference_model()(x).numpy(), atol=1e-6)
    from erl_derain.run_config import record_from_dict

    assert card._schedule(record_from_dict(info["config"]).flat()) == (
        "stage III 2 steps, Adam 0.0001, learning rate x0.25 after step 1")
    assert card._schedule(record_from_dict(info["init_config"]).flat()) == ("stages I 1, II 1, III 1 steps, Adam 0.0004, learning rate "
                                                   "divided by 10 on loss plateaus")
