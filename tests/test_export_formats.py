"""`erl-derain export --format=onnx|litert` (erl_derain.serving.formats): the ONNX file run by
onnxruntime and the LiteRT file run by its interpreter give the Keras InferenceModel's output on a
real photo within 1e-4, for the bundled model (dynamic sizes, through the command line) and a tiny
random ERL-Net (fixed --export_size); the padding the converters need; and the errors for a bad
format, a bad size and a missing package. The conversions need the "export" extra
(pip install "erl_derain[export]"); the tests that run them are skipped with a reason without it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from erl_derain.inference import pad_to_multiple
from erl_derain.serving import formats

from .conftest import shared_data_dir

TOLERANCE = 1e-4
EXTRA = 'the "export" extra is not installed (pip install "erl_derain[export]")'


def _need_export_extra():
    for module in ("tf2onnx", "onnx", "onnxruntime", "ai_edge_litert"):
        pytest.importorskip(module, reason=EXTRA)


def _real_photo(name: str = "147.jpg"):
    from erl_derain.data import image_io

    shared = shared_data_dir()
    if shared is None or not (shared / "real_rain" / name).exists():
        pytest.skip("../shared/data/real_rain is absent: the real-photo comparison needs it")
    image, _ = image_io.read_image(str(shared / "real_rain" / name))
    return image


def _cli(*args: str) -> int:
    from absl import flags

    from erl_derain import cli

    flags.FLAGS.unparse_flags()
    try:
        return cli.main(flags.FLAGS(["erl-derain", *args])) or 0
    finally:
        flags.FLAGS.unparse_flags()


# --------------------------------------------------------------------------------------------------
# The padding (no extra needed)
# --------------------------------------------------------------------------------------------------

def _reference_pad(x, multiple):
    """Reflect padding, then edge replication where the side is shorter than the pad (the rule)."""
    h, w = x.shape[1], x.shape[2]
    ph, pw = -h % multiple, -w % multiple
    rh, rw = min(ph, h - 1), min(pw, w - 1)
    x = np.pad(x, [(0, 0), (0, rh), (0, rw), (0, 0)], mode="reflect")
    return np.pad(x, [(0, 0), (0, ph - rh), (0, pw - rw), (0, 0)], mode="edge")


def test_padding_is_reflection_then_edge_and_keeps_the_channels_static():
    rng = np.random.default_rng(0)
    for h in (1, 2, 3, 5, 8, 9, 17):
        for w in (1, 2, 4, 7, 16, 23):
            for multiple in (1, 4, 8):
                x = rng.random((2, h, w, 3), dtype=np.float32)
                padded, ph, pw = pad_to_multiple(tf.constant(x), multiple)
                np.testing.assert_array_equal(padded.numpy(), _reference_pad(x, multiple), err_msg=f"{h}x{w}/{multiple}")
                assert (int(ph), int(pw)) == (h, w)
    # With unknown sizes the channel count stays known (LiteRT's converter needs it for the first conv).
    fn = tf.function(lambda t: pad_to_multiple(t, 8)[0], input_signature=[tf.TensorSpec([None, None, None, 3])])
    assert fn.get_concrete_function().structured_outputs.shape.as_list() == [None, None, None, 3]


# --------------------------------------------------------------------------------------------------
# Errors (no extra needed: they come before any conversion)
# --------------------------------------------------------------------------------------------------

def test_export_size_parsing_and_errors():
    assert formats.parse_export_size(None, "onnx") is None and formats.parse_export_size("", "litert") is None
    assert formats.parse_export_size("512", "onnx") == (512, 512)
    assert formats.parse_export_size("320x480", "litert") == (320, 480)
    assert formats.parse_export_size((64, 96), "onnx") == (64, 96)
    for bad in ("0", "-8", "abc", "512x", "1x2x3", "1.5", "512x0"):
        with pytest.raises(formats.ExportFormatError, match="--export_size=.*positive integer N"):
            formats.parse_export_size(bad, "onnx")
    with pytest.raises(formats.ExportFormatError, match="--export_size='512' fixes the input size .* SavedModel takes any"):
        formats.parse_export_size("512", "saved_model")
    with pytest.raises(formats.ExportFormatError, match="--format='tflite': expected one of saved_model, onnx, litert"):
        formats.parse_export_size(None, "tflite")
    with pytest.raises(formats.ExportFormatError, match="--format='pb'"):
        formats.export_file(lambda x: x, "/nonexistent", "pb")
    assert issubclass(formats.ExportFormatError, ValueError)


def test_cli_refuses_a_bad_size_before_any_work(run_cli, tmp_path):
    base = tmp_path / "m"
    for fmt, size, message in (("onnx", "0", "--export_size='0': expected a positive integer"),
                               ("litert", "big", "--export_size='big'"),
                               ("saved_model", "512", "--export_size='512' fixes the input size")):
        code, out, err = run_cli("export", "--pretrained", f"--export_base={base}", f"--format={fmt}",
                                 f"--export_size={size}")
        assert code == 2 and message in err and "Traceback" not in err, (fmt, size, err)
        assert "Using the bundled" not in out and not base.exists()  # nothing loaded, nothing written


def test_cli_names_the_missing_package(run_cli, tmp_path, monkeypatch):
    real = formats.importlib.util.find_spec
    monkeypatch.setattr(formats.importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    code, _, err = run_cli("export", "--pretrained", f"--export_base={tmp_path / 'm'}", "--format=onnx")
    assert code == 2 and "--format=onnx needs tf2onnx" in err and 'pip install "erl_derain[export]"' in err
    assert not (tmp_path / "m").exists()


def test_a_bad_format_name_is_a_flag_error(tmp_path):
    env = {**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "erl_derain.cli", "export", "--pretrained", "--format=tflite",
                           f"--export_base={tmp_path / 'm'}"], capture_output=True, text=True, env=env, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "--format=tflite" in text and "saved_model|onnx|litert" in text, text[-2000:]
    assert "Traceback" not in text and not (tmp_path / "m").exists()


# --------------------------------------------------------------------------------------------------
# The bundled model through the command line, dynamic sizes
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    _need_export_extra()
    from erl_derain.pretrained import load_pretrained_trainer

    root = tmp_path_factory.mktemp("formats")
    for fmt in ("onnx", "litert"):
        assert _cli("export", "--pretrained", f"--export_base={root / fmt}", f"--format={fmt}") == 0
    trainer, _ = load_pretrained_trainer()
    return {"root": root, "model": trainer.inference_model(),
            "onnx": root / "onnx" / "1" / "model.onnx", "litert": root / "litert" / "1" / "model.tflite"}


@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_bundled_model_file_matches_keras_on_a_real_photo(bundled, fmt):
    photo = _real_photo()
    crop = photo[3:3 + 189, 5:5 + 245]  # 189x245: not multiples of 8, so the graph pads and crops
    run = formats.load_runner(bundled[fmt])
    want = bundled["model"](crop[None]).numpy()
    got = run(crop[None])
    assert got.shape == want.shape == (1, 189, 245, 3) and got.dtype == np.float32
    assert np.max(np.abs(got - want)) <= TOLERANCE
    assert np.max(np.abs(want - crop[None])) > 0.01  # the network did something to the photo
    # another size and a batch of two through the same (dynamic) file
    batch = np.stack([photo[:64, :72], photo[-64:, -72:]])
    np.testing.assert_allclose(run(batch), bundled["model"](batch).numpy(), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_bundled_export_records_what_it_wrote(bundled, fmt):
    folder = bundled[fmt].parent
    info = json.loads((folder / formats.FORMAT_INFO).read_text())
    assert info["format"] == fmt and info["file"] == bundled[fmt].name and info["method"] == "erlnet"
    assert info["version"] == 1 and info["pad_multiple"] == 8 and info["dynamic_size"] is True
    assert info["inputs"]["images"]["shape"] == [None, None, None, 3] and list(info["outputs"]) == ["derained"]
    assert info["config"]["method_config"]["widths"] == [24, 48, 96]  # the run's configuration (config.json)
    assert info["check"]["checked"] and info["check"]["max_abs_difference"] <= TOLERANCE
    assert info["bytes"] == bundled[fmt].stat().st_size > 3 * 2**20  # the float32 weights are inside
    assert sorted(p.name for p in folder.iterdir()) == sorted([bundled[fmt].name, formats.FORMAT_INFO])
    assert not (bundled["root"] / "models.config").exists()  # TF Serving's files are the SavedModel's only


# --------------------------------------------------------------------------------------------------
# A tiny random ERL-Net, fixed --export_size
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    _need_export_extra()
    from erl_derain.methods import get_method, make_trainer
    from erl_derain.run_config import make_record

    import keras

    keras.utils.set_random_seed(7)
    trainer = make_trainer(make_record("erlnet", **dict(get_method("erlnet").tiny)))
    trainer.build_networks()
    model = trainer.inference_model()
    root = tmp_path_factory.mktemp("tiny")
    out = {"model": model, "root": root}
    for fmt in ("onnx", "litert"):
        out[fmt] = formats.export_file(model, root / fmt, fmt, size=(48, 60), metadata={"method": "erlnet"})
    return out


@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_tiny_model_at_a_fixed_size_matches_keras_on_a_real_photo(tiny, fmt):
    info = tiny[fmt]
    assert info["dynamic_size"] is False and info["export_size"] == [48, 60]
    assert info["inputs"]["images"]["shape"] == [1, 48, 60, 3]
    crop = _real_photo("1.jpg")[10:58, 20:80][None]  # 48x60: padded to 48x60 (multiple 4) inside, nothing to crop
    run = formats.load_runner(info["path"])
    got, want = run(crop), tiny["model"](crop).numpy()
    assert got.shape == (1, 48, 60, 3) and np.max(np.abs(got - want)) <= TOLERANCE
    with pytest.raises(Exception):  # the size is really fixed: the runtime refuses another
        run(crop[:, :40, :40])


def test_versions_and_overwrite_of_a_file_export(tiny):
    base = tiny["root"] / "onnx"
    with pytest.raises(FileExistsError, match="1 exists: choose another --version.* \\(2\\)"):
        formats.export_file(tiny["model"], base, "onnx", version=1)
    assert formats.describe(tiny["onnx"]).startswith(f"Exported onnx file {tiny['onnx']['path']}")
    assert "fixed at --export_size=48x60" in formats.describe(tiny["onnx"])


# --------------------------------------------------------------------------------------------------
# benchmarks/export_formats.py's section of docs/benchmarks.md (pure helpers, no measurement)
# --------------------------------------------------------------------------------------------------

def test_benchmark_section_is_replaced_in_place_and_survives_the_suite_page(tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "export_formats.py"
    spec = importlib.util.spec_from_file_location("export_formats_bench", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import timing  # put on sys.path by the script

    rows = [{"format": "onnx", "mib": 3.5, "export_s": 20.0, "median_s": 0.5, "min_s": 0.4, "first_s": 1.0,
             "max_abs_diff": 6e-7, "note": "dynamic; onnxruntime 1"}]
    machine = {"cpu": "CPU", "cores": 2, "load_average": (1.0, 1.0, 1.0), "threads": 2, "tensorflow": "2",
               "size": 512, "reps": 5}
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nthe suite's tables\n")
    timing.write_section(str(page), bench.section(rows, machine, "python benchmarks/export_formats.py"))
    first = page.read_text()
    assert first.startswith("# Benchmarks\n\nthe suite's tables\n") and "| onnx | 3.50 | 0.500 | 0.400 |" in first
    rows[0]["median_s"] = 0.25
    timing.write_section(str(page), bench.section(rows, machine, "python benchmarks/export_formats.py"))
    second = page.read_text()
    assert second.count(bench.BEGIN) == 1 and "| onnx | 3.50 | 0.250 |" in second and "0.500" not in second
    timing.write_page(str(page), "# Benchmarks\n\nnew tables\n")  # what benchmarks/suite.py --markdown does
    third = page.read_text()
    assert third.startswith("# Benchmarks\n\nnew tables\n") and third.count(bench.BEGIN) == 1 and "0.250" in third
