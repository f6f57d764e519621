"""The `erl-derain` verbs end to end on tiny networks: train, derain, evaluate, export, errors."""

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from erl_derain import metrics
from erl_derain.data.image_io import load_rgb

from .conftest import TINY_FLAGS, make_folder_dataset, run_settings

FLAGS_DIR = Path(__file__).resolve().parents[1] / "flags"


def _train(run_cli, model_dir, data, *extra):
    code, out, err = run_cli("train", f"--model_dir={model_dir}", f"--dataset=folder:{data}", "--crop_size=16",
                             "--batch_size=2", "--jit_compile=false", "--noevaluate_after", *TINY_FLAGS, *extra)
    assert code == 0, err
    return out


@pytest.mark.parametrize("base", ["memd", "memd-", "memd--"])
def test_memd_variants_train_and_derain_odd_sizes(run_cli, tmp_path, base):
    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    model_dir = tmp_path / f"run_{base}"
    _train(run_cli, model_dir, data, "--method=memd", f"--erl_base={base}", "--stage_steps=1")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(photos / "odd.jpg"), (rng.random((37, 53, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(photos / "gray.png"), (rng.random((19, 23)) * 255).astype(np.uint8))
    cv2.imwrite(str(photos / "tiny.png"), (rng.random((3, 5, 3)) * 255).astype(np.uint8))
    out_dir = tmp_path / "out"
    code, out, err = run_cli("derain", f"--model_dir={model_dir}", f"--output_dir={out_dir}", str(photos))
    assert code == 0, err
    for name, shape in (("odd", (37, 53, 3)), ("gray", (19, 23, 3)), ("tiny", (3, 5, 3))):
        result = load_rgb(str(out_dir / f"{name}.png"))
        assert result.shape == shape
    # Existing outputs are kept unless --overwrite.
    code, out, _ = run_cli("derain", f"--model_dir={model_dir}", f"--output_dir={out_dir}", str(photos / "odd.jpg"))
    assert code == 0 and "1 skipped" in out


def test_derain_one_bad_file_does_not_stop_the_others(run_cli, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    _train(run_cli, tmp_path / "run", data, "--method=memd", "--stage_steps=1")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "broken.png").write_bytes(b"not an image")
    cv2.imwrite(str(photos / "good.png"), np.full((20, 20, 3), 128, np.uint8))
    code, out, err = run_cli("derain", f"--model_dir={tmp_path / 'run'}", f"--output_dir={tmp_path / 'out'}",
                             str(photos))
    assert code == 1
    assert "broken.png" in err and (tmp_path / "out" / "good.png").exists()


def test_train_evaluate_export_roundtrip(run_cli, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=3, size=(24, 32))
    model_dir = tmp_path / "run"
    out = _train(run_cli, model_dir, data, "--erl_schedule=ma_d", "--stage_steps=2,1,1", "--evaluate_after",
                 "--eval_split=test")
    assert "Stage III (3/3)" in out and "Mean over 3 images" in out
    config = run_settings(model_dir)
    assert config["method"] == "erlnet" and config["erl_widths"] == (8, 16)
    assert json.loads((model_dir / "config.json").read_text())["format"] == 2
    assert (model_dir / "flags.txt").read_text().count("--erl_schedule=ma_d") == 1
    assert list((model_dir / "logs").iterdir())

    code, out, err = run_cli("evaluate", f"--model_dir={model_dir}", f"--output={tmp_path / 'ev'}")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "ev" / "per_image.csv")))
    summary = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [r["name"] for r in rows] == ["img0", "img1", "img2"]
    # The rainy-input columns are the metric of the files themselves (full size, no crop).
    for r in rows:
        rainy = cv2.imread(str(data / "rainy" / f"{r['name']}.png"))[..., ::-1]
        clean = cv2.imread(str(data / "clean" / f"{r['name']}.png"))[..., ::-1]
        assert float(r["input_psnr_y"]) == pytest.approx(metrics.psnr_y(rainy, clean), abs=1e-6)
        assert (int(r["height"]), int(r["width"])) == (24, 32)
    assert summary["psnr_y"] == pytest.approx(np.mean([float(r["psnr_y"]) for r in rows]), abs=1e-9)

    # --self_ensemble=4: each image's output is the mean of the network run on the four mirrored copies
    # (mirrored with numpy here, mirrored back, averaged, then clipped) -- the metric of that image.
    code, out, err = run_cli("evaluate", f"--model_dir={model_dir}", f"--output={tmp_path / 'ev4'}",
                             "--self_ensemble=4")
    assert code == 0, err
    rows4 = list(csv.DictReader(open(tmp_path / "ev4" / "per_image.csv")))
    assert json.loads((tmp_path / "ev4" / "metrics.json").read_text())["self_ensemble"] == 4
    assert json.loads((model_dir / "metrics.json").read_text())["self_ensemble"] == 4  # the latest evaluation's
    from erl_derain.inference import pad_to_multiple
    from erl_derain.training import load_trainer

    net = load_trainer(str(model_dir))[0].inference_network()  # the raw network: the views average its outputs
    for r in rows4:
        rainy = cv2.imread(str(data / "rainy" / f"{r['name']}.png"))[..., ::-1].astype(np.float32) / 255
        clean = cv2.imread(str(data / "clean" / f"{r['name']}.png"))[..., ::-1]
        padded = pad_to_multiple(tf.constant(rainy[None]), 4)[0].numpy()[0]
        views = []
        for flip in (lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1]):
            views.append(flip(net(tf.constant(flip(padded)[None].copy())).numpy()[0]))
        expected = np.clip(np.mean(views, 0)[:24, :32], 0, 1)
        assert float(r["psnr_y"]) == pytest.approx(metrics.psnr_y(expected, clean), abs=5e-3)
    # (and the views do differ: the ensemble is not the single run)
    assert max(abs(float(a["psnr_y"]) - float(b["psnr_y"])) for a, b in zip(rows, rows4)) > 0.02

    export_base = tmp_path / "export" / "erlnet"
    code, out, err = run_cli("export", f"--model_dir={model_dir}", f"--export_base={export_base}")
    assert code == 0, err
    code, out, err = run_cli("export", f"--model_dir={model_dir}", f"--export_base={export_base}")
    assert sorted(p.name for p in export_base.iterdir()) == ["1", "2"]
    loaded = tf.saved_model.load(str(export_base / "1"))
    serve = loaded.signatures["serving_default"]
    x = tf.random.uniform((2, 21, 35, 3), seed=4)
    y = serve(images=x)["derained"]
    assert y.shape == (2, 21, 35, 3)
    # Same numbers as the checkpoint run in Python (pad to 4, crop back, clip).
    from erl_derain.inference import apply_padded
    from erl_derain.training import load_trainer

    trainer, _ = load_trainer(str(model_dir))
    np.testing.assert_allclose(y.numpy(), apply_padded(trainer.inference_model(), x, 4).numpy(), atol=1e-5)


def test_missing_partner_gives_clear_error(run_cli, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    (data / "clean" / "img1.png").unlink()
    code, out, err = run_cli("train", f"--model_dir={tmp_path / 'run'}", f"--dataset=folder:{data}",
                             "--crop_size=16", "--stage_steps=1,1,1", *TINY_FLAGS)
    assert code == 1
    assert "img1.png" in err and "Traceback" not in err


def test_bad_verb_and_bad_flags(run_cli, tmp_path):
    code, _, err = run_cli("fly")
    assert code == 2 and "expected a verb" in err
    code, _, err = run_cli("train", f"--model_dir={tmp_path}", "--stage_steps=1,1", "--crop_size=16", *TINY_FLAGS,
                           f"--dataset=folder:{make_folder_dataset(tmp_path / 'd', n=1, size=(16, 16))}")
    assert code == 2 and "--stage_steps has 2 value(s)" in err
    code, _, err = run_cli("train", f"--model_dir={tmp_path / 'm'}", "--crop_size=18", "--stage_steps=1,1,1",
                           *TINY_FLAGS)
    assert code == 2 and "--crop_size=18 must be a multiple of 4" in err
    code, _, err = run_cli("evaluate", f"--model_dir={tmp_path / 'nothing'}")
    assert code == 2 and "config.json" in err


@pytest.mark.parametrize("flagfile", sorted(FLAGS_DIR.rglob("*.flags")), ids=lambda p: p.name)
def test_flagfiles_parse_and_match_their_strategy(flagfile):
    from erl_derain import cli
    from erl_derain.methods import make_trainer

    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["erl-derain", f"--flagfile={flagfile}"])
        config = cli._record_from_flags().flat()
        trainer = make_trainer(config)
        per_stage = flags.FLAGS.stage_steps or flags.FLAGS.stage_epochs
        assert len(per_stage) == len(trainer.stages), flagfile
        assert flags.FLAGS.model_dir
        if flagfile.parent.name == "erlnet" and not flagfile.name.endswith("_baseline.flags"):
            ds, rest = flagfile.stem.split("_", 1)
            strategy, entanglement = rest.rsplit("_", 1)
            assert (config["dataset"], config["erl_schedule"], config["erl_entanglement"]) == (ds, strategy, entanglement)
            assert (config["crop_size"], config["batch_size"], config["lr"], config["erl_lambda_fre"]) == (320, 1, 4e-4, 0.01)
        # What a flagfile's comment says the epochs add to is what its values add to.
        text = " ".join(flagfile.read_text().split())
        claim = re.search(r"add to (\d+) epochs", text) or re.search(r"(\d+) epochs in all", text)
        if claim and flags.FLAGS.stage_epochs:
            assert sum(float(e) for e in flags.FLAGS.stage_epochs) == float(claim.group(1)), flagfile
        if flagfile.parent.name == "menet":
            ds, rest = flagfile.stem.split("_", 1)
            assert config["dataset"] == ds and config["method"] == "menet"
            parts = rest.split("_")
            mode = "fixed" if rest == "lp" else [p for p in parts if p in ("fixed", "gb", "lb")][0]
            tasks = {"p", "e", "t"} if rest.startswith("menet") else {p[1] for p in parts if p in ("lp", "le", "lt")}
            assert trainer.weighting.mode == mode and set(trainer.tasks) == tasks
            assert trainer.cfg.channel_attention == rest.startswith("menet")
            assert trainer.cfg.blocks == (16 if rest.endswith("_deep") else 8)
            assert (config["crop_size"], config["batch_size"], config["lr"], config["crop_mode"]) == (224, 20, 1e-3, "ten_crop")
            assert config["lr_decay_epochs"] == (40, 80) and config["stage_epochs"] == (100,)
    finally:
        flags.FLAGS.unparse_flags()


def test_synthesize_and_train_on_own_photos(run_cli, tmp_path):
    from erl_derain.data.image_io import save_rgb

    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for i in range(5):
        save_rgb(str(photos / f"p{i}.png"), rng.random((32, 40, 3)))
    out = tmp_path / "rain"
    code, stdout, err = run_cli("synthesize", f"--clean_dir={photos}", f"--output_dir={out}", "--renders_per_image=2",
                                "--rain_density=0.02", "--rain_intensity=0.5")
    assert code == 0, err
    assert "Wrote 10 rainy/clean pairs" in stdout
    rainy = sorted(p.name for p in (out / "rainy").iterdir())
    assert rainy == sorted(p.name for p in (out / "clean").iterdir()) and len(rainy) == 10
    r, c = load_rgb(str(out / "rainy" / "p0_0.png")), load_rgb(str(out / "clean" / "p0_0.png"))
    assert (r >= c - 1 / 255).all() and (r > c + 0.1).any()  # additive streaks
    _train(run_cli, tmp_path / "run_folder", out, "--method=memd", "--stage_steps=1")
    # --dataset=synthetic_rain on your own photos (a TFDS config of its own in --data_dir).
    _train_out = run_cli("train", f"--model_dir={tmp_path / 'run_syn'}", "--dataset=synthetic_rain",
                         f"--clean_dir={photos}", f"--data_dir={tmp_path / 'tfds'}", "--method=memd",
                         "--stage_steps=1", "--crop_size=16", "--jit_compile=false", "--noevaluate_after", *TINY_FLAGS)
    assert _train_out[0] == 0, _train_out[2]
    assert list((tmp_path / "tfds" / "synthetic_rain").glob("custom_*"))
    assert run_settings(tmp_path / "run_syn")["clean_dir"] == str(photos)


def test_derain_keeps_grey_alpha_and_16_bit(run_cli, tmp_path):
    from PIL import Image

    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    _train(run_cli, tmp_path / "run", data, "--method=memd", "--stage_steps=1")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((21, 30)) * 255).astype(np.uint8), "L").save(photos / "grey.png")
    rgba = (rng.random((21, 30, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(photos / "rgba.png")
    cv2.imwrite(str(photos / "deep.png"), (rng.random((21, 30, 3)) * 65535).astype(np.uint16))
    code, out, err = run_cli("derain", f"--model_dir={tmp_path / 'run'}", f"--output_dir={tmp_path / 'out'}",
                             str(photos))
    assert code == 0, err
    with Image.open(tmp_path / "out" / "grey.png") as im:
        assert im.mode == "L" and im.size == (30, 21)
    with Image.open(tmp_path / "out" / "rgba.png") as im:
        assert im.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(im)[..., 3], rgba[..., 3])  # alpha untouched
    deep = cv2.imread(str(tmp_path / "out" / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (21, 30, 3)
    # A JPEG cannot hold alpha: refused by name, the other files still written.
    code, _, err = run_cli("derain", f"--model_dir={tmp_path / 'run'}", f"--output_dir={tmp_path / 'jpg'}",
                           "--output_format=jpg", str(photos))
    assert code == 1 and "rgba" in err and (tmp_path / "jpg" / "grey.jpg").exists()


def test_derain_via_server_needs_a_server(run_cli, tmp_path):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.full((8, 8, 3), 100, np.uint8))
    code, _, err = run_cli("derain", f"--server=127.0.0.1:{port}", "--model_name=erlnet",
                           f"--output_dir={tmp_path / 'out'}", str(photo))
    assert code == 1 and f"127.0.0.1:{port}" in err
    code, _, err = run_cli("derain", f"--server=127.0.0.1:{port}", f"--output_dir={tmp_path / 'out'}", str(photo))
    assert code == 2 and "--model_name is required" in err
    code, _, err = run_cli("derain", f"--server=127.0.0.1:{port}", "--model_name=erlnet", "--self_ensemble=2",
                           f"--output_dir={tmp_path / 'out'}", str(photo))
    assert code == 2 and "--self_ensemble" in err and "Traceback" not in err


def test_a_tf_error_outside_the_data_is_not_blamed_on_the_data(run_cli, tmp_path, monkeypatch):
    """An InvalidArgumentError from the model's own computation (here: a matmul of mismatched shapes run
    where cmd_evaluate would run) is reported as such, in one line, not as "reading the data failed"."""
    from erl_derain import cli

    def bad_matmul():
        tf.matmul(tf.ones((2, 3)), tf.ones((2, 3)))

    monkeypatch.setattr(cli, "cmd_evaluate", bad_matmul)
    (tmp_path / "config.json").write_text("{}")  # a run folder, for the flag checks
    code, _, err = run_cli("evaluate", f"--model_dir={tmp_path}")
    assert code == 1 and "TensorFlow rejected an operation" in err and "Matrix size-incompatible" in err
    assert "reading the data failed" not in err and "Traceback" not in err

    def bad_batch():  # the same kind of error, raised by a tf.data iterator: a data error
        next(iter(tf.data.Dataset.from_tensors(tf.constant(-1)).map(lambda v: tf.ones((v,)))))

    monkeypatch.setattr(cli, "cmd_evaluate", bad_batch)
    code, _, err = run_cli("evaluate", f"--model_dir={tmp_path}")
    assert code == 1 and "reading the data failed" in err and "Traceback" not in err


def test_a_truncated_jpeg_found_while_training_is_named(run_cli, tmp_path):
    """The header scan cannot see a truncated JPEG; when tf.data fails on it, the CLI names the file
    (no TensorFlow stack trace) and keeps the checkpoints."""
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for sub in ("rainy", "clean"):
        (data / sub).mkdir(parents=True)
    for i in range(3):
        img = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(data / "rainy" / f"{i}.jpg"), img)
        cv2.imwrite(str(data / "clean" / f"{i}.jpg"), img)
    full = (data / "rainy" / "1.jpg").read_bytes()
    (data / "rainy" / "1.jpg").write_bytes(full[: len(full) // 2])
    code, _, err = run_cli("train", f"--model_dir={tmp_path / 'run'}", f"--dataset=folder:{data}", "--crop_size=16",
                           "--batch_size=1", "--method=memd", "--stage_steps=6", "--jit_compile=false",
                           "--noevaluate_after", *TINY_FLAGS)
    assert code == 1
    assert "reading the data failed" in err and "rainy/1.jpg" in err and "Traceback" not in err


def test_bad_flags_fail_before_any_work(tmp_path):
    """Errors from the flags themselves (absl) and from their values (ours), in a real process."""
    import subprocess
    import sys

    env = {**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def run(*args):
        out = subprocess.run([sys.executable, "-m", "erl_derain.cli", *args], capture_output=True, text=True,
                             env=env, timeout=120)
        return out.returncode, out.stdout + out.stderr

    code, text = run("train", f"--flagfile={tmp_path / 'missing.flags'}")
    assert code != 0 and "Unable to open flagfile" in text and "missing.flags" in text
    code, text = run("train", "--erl_schedule=ma_z", f"--model_dir={tmp_path / 'r'}")
    assert code != 0 and "--erl_schedule" in text and "ma_d" in text
    code, text = run("train", "--method=nope", f"--model_dir={tmp_path / 'r'}", "--stage_steps=1")
    assert code == 2 and "unknown --method='nope'" in text and "Traceback" not in text
    code, text = run("train", "--dataset=no_such_set", f"--model_dir={tmp_path / 'r'}", "--stage_steps=1,1,1",
                     *TINY_FLAGS, "--crop_size=16")
    assert code == 2 and "unknown dataset 'no_such_set'" in text and "Traceback" not in text
    code, text = run("train", f"--model_dir={tmp_path / 'r'}", "--stage_steps=1,1,1", "--crop_size=30", *TINY_FLAGS)
    assert code == 2 and "--crop_size=30 must be a multiple of 4" in text
    assert not (tmp_path / "r" / "checkpoints").exists()  # no work was done
