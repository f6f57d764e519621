"""The bundled pretrained model: checksum, loading, derain without --model_dir, export --pretrained,
and its quality on real benchmark pairs it has never seen."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from erl_derain import pretrained
from erl_derain.inference import derain_image

from .conftest import shared_data_dir


BUNDLED = ("erlnet", "fast")  # the names of --pretrained


@pytest.mark.parametrize("alias", BUNDLED)
def test_bundled_weights_load_and_match_their_checksum(alias):
    name = pretrained.resolve(alias)
    info = pretrained.read_info(name)
    _, weights = pretrained.paths(name)
    assert pretrained.sha256_of(weights) == info["sha256"]
    import erl_derain

    model = erl_derain.load_pretrained(name)
    x = tf.random.uniform((1, 24, 40, 3), seed=0)
    from erl_derain.inference import apply_padded

    y = apply_padded(model, x, model.pad_multiple)
    assert y.shape == x.shape
    assert info["parameters"] == sum(int(np.prod(v.shape)) for v in model.weights)
    assert info["config"]["method"] == {"erlnet": "erlnet", "fast": "menet"}[alias]


def test_pretrained_names_are_checked_before_any_work(run_cli, tmp_path):
    code, _, err = run_cli("derain", "--pretrained=nope", f"--output_dir={tmp_path}", str(tmp_path / "x.png"))
    assert code == 2 and "--pretrained=nope: no such bundled model; there are erlnet, fast" in err
    code, _, err = run_cli("evaluate", "--pretrained=fast", f"--model_dir={tmp_path}")
    assert code == 2 and "not both" in err


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
    assert f"Using the bundled model {pretrained.DEFAULT}" in out
    result = cv2.imread(str(tmp_path / "out" / "2.png"))
    assert result.shape == cv2.imread(str(photo)).shape
    code, out, err = run_cli("derain", "--pretrained=fast", f"--output_dir={tmp_path / 'fast'}", str(photo))
    assert code == 0, err
    assert f"Using the bundled model {pretrained.resolve('fast')}" in out
    fast = cv2.imread(str(tmp_path / "fast" / "2.png"))
    assert fast.shape == result.shape and np.abs(fast.astype(int) - result.astype(int)).mean() > 0.1
    code, _, err = run_cli("export", "--pretrained", f"--export_base={tmp_path / 'exp' / 'erlnet'}")
    assert code == 0, err
    assert (tmp_path / "exp" / "erlnet" / "1" / "saved_model.pb").exists()


@pytest.mark.parametrize("alias", [
    pytest.param("erlnet", marks=pytest.mark.xfail(
        strict=True, reason="issue 24's bar is not reached yet by erlnet_natural: kodim01 comes back at 37.8 dB; "
                            "strict, so the test fails once the model reaches it and must be updated")),
    "fast"])
def test_bundled_model_leaves_a_rain_free_validation_photo_alone(alias):
    """Kodak24's first photo (a validation photo of the bundled models' data, never trained on): the
    output is at least 38 dB Y-PSNR from the input (issue 24's bar for rain-free content)."""
    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is absent")
    from erl_derain import metrics
    from erl_derain.data.image_io import load_rgb

    model = pretrained.load_pretrained(pretrained.resolve(alias))
    photo = load_rgb(str(shared / "clean_photos" / "kodak24" / "kodim01.png"))
    assert metrics.psnr_y(derain_image(model, photo, model.pad_multiple, tile=0), photo) >= 38.0


@pytest.mark.parametrize("alias", BUNDLED)
def test_bundled_model_improves_heavy_rain_pairs_it_never_saw(alias):
    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is absent")
    from erl_derain import metrics
    from erl_derain.data.image_io import load_rgb

    model = pretrained.load_pretrained(pretrained.resolve(alias))
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


def test_a_run_can_start_from_a_bundled_model(tmp_path):
    """``--init_from=pretrained:NAME``: the de-raining network starts as the bundled weights (a step at a
    vanishing learning rate leaves them as stored); other sizes are a clear error naming the flag."""
    from erl_derain import training
    from erl_derain.data import pipelines
    from erl_derain.methods import make_trainer
    from erl_derain.run_config import record_from_dict

    from .conftest import make_folder_dataset

    name = "erlnet_synthetic"
    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    cfg = {**record_from_dict(pretrained.read_info(name)["config"]).flat(), "dataset": f"folder:{data}",
           "crop_size": 16, "batch_size": 1, "stage_steps": ["0", "0", "1"], "lr": 1e-30, "mixed_precision": False,
           "init_from": f"pretrained:{name}", "lr_decay_steps": None}

    def stream(start):
        return pipelines.paired_dataset(f"folder:{data}", "train", batch_size=1, crop_size=16, seed=0,
                                        start_index=start)

    trainer = make_trainer(cfg)
    training.train(trainer, cfg, stream, model_dir=str(tmp_path / "run"), stage_steps=[0, 0, 1], batch_size=1,
                   jit_compile="false", verbose=0, init_from=cfg["init_from"])
    _, weights = pretrained.paths(name)
    with np.load(weights) as stored:
        for v in trainer.inference_model().weights:
            np.testing.assert_allclose(v.numpy(), stored[v.path], atol=1e-6, err_msg=v.path)
    other = {**cfg, "erl_widths": [8, 16], "erl_bottleneck_width": 16}
    with pytest.raises(training.TrainingError, match=f"--init_from=pretrained:{name}: .*shape"):
        training.train(make_trainer(other), other, stream, model_dir=str(tmp_path / "other"), stage_steps=[0, 0, 1],
                       batch_size=1, jit_compile="false", verbose=0, init_from=cfg["init_from"])


def test_card_links_pairs_of_a_relative_shared_folder(tmp_path, monkeypatch):
    """`card --shared_data=../shared/data` (a relative path, as the card's README gives it): the pairs
    linked into a temporary folder still point at the images."""
    from erl_derain.pretrained import card

    for sub, name in (("rain", "norain-1.png"), ("norain", "norain-1.png")):
        (tmp_path / "shared" / "jorder_e_small" / sub).mkdir(parents=True)
        (tmp_path / "shared" / "jorder_e_small" / sub / name).write_bytes(sub.encode())
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    dest = card._link_pairs("../shared", "jorder_e_small", str(tmp_path / "links"))
    assert (Path(dest) / "rainy" / "norain-1.png").read_bytes() == b"rain"
    assert (Path(dest) / "clean" / "norain-1.png").read_bytes() == b"norain"
