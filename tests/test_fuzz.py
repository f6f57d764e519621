"""Fuzzing the decoding paths (hypothesis): random bytes and random small arrays give the documented
error (ValueError naming the file / a named InvalidArgumentError) or a valid image, never a crash."""

import io
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from erl_derain.data.image_io import read_image

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Real headers followed by garbage reach deeper into the decoders than pure noise.
HEADERS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00", b"GIF89a"]


def _write(data: bytes, suffix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


@SETTINGS
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=256),
       suffix=st.sampled_from([".png", ".jpg", ".bmp", ".webp", ".tif"]))
def test_random_bytes_give_a_named_error_or_an_image(header, body, suffix):
    path = _write(header + body, suffix)
    try:
        image, meta = read_image(path)
    except ValueError as e:
        assert path in str(e)  # the message names the file
    else:
        assert image.dtype == np.float32 and image.ndim == 3 and image.shape[-1] == 3
        assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    finally:
        os.unlink(path)


@SETTINGS
@given(h=st.integers(1, 12), w=st.integers(1, 12), mode=st.sampled_from(["L", "LA", "RGB", "RGBA", "P", "I;16"]),
       seed=st.integers(0, 2**16), cut=st.integers(0, 64))
def test_random_small_images_and_truncations(h, w, mode, seed, cut):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1}[mode]
        arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        im = Image.fromarray(arr[..., 0] if channels == 1 else arr, "L" if mode == "P" else mode)
        if mode == "P":
            im = im.convert("P")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = buf.getvalue()
    if cut:
        data = data[:-cut]  # a truncated file
    path = _write(data, ".png")
    try:
        image, _ = read_image(path)
        assert image.shape == (h, w, 3)
    except ValueError as e:
        assert cut and path in str(e)  # only truncated files may fail
    finally:
        os.unlink(path)


@pytest.fixture(scope="module")
def bytes_signature(tmp_path_factory):
    """derain_image of a SavedModel exported from an identity network."""
    import keras
    import tensorflow as tf

    from erl_derain import serving

    model = keras.Sequential([keras.layers.Input((None, None, 3)), keras.layers.Identity()])
    base = tmp_path_factory.mktemp("exp") / "identity"
    path = serving.export_saved_model(model, 1, str(base), metadata={"method": "identity"}, server_config=False)
    return tf.saved_model.load(path).signatures["derain_image"]


@settings(max_examples=40, deadline=None)
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=128))
def test_serving_bytes_signature_rejects_garbage_by_name(bytes_signature, header, body):
    import tensorflow as tf

    try:
        out = bytes_signature(image_bytes=tf.constant([header + body]))
    except tf.errors.InvalidArgumentError as e:
        assert "image_bytes" in str(e) or "decode" in str(e).lower()
    else:
        assert out["derained_png_bytes"].shape == (1,)
