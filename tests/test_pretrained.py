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
