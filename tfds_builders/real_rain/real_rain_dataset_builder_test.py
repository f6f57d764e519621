"""real_rain: TFDS conformance on dummy_data, formats (grey, RGBA, JPEG bytes kept), a corrupt file,
and a few of the real photos of the shared data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import tfds_builders  # noqa: F401  (registers the builders)
from tfds_builders import builder_testing as bt
from tfds_builders import paired_common as pc
from tfds_builders.real_rain import real_rain_dataset_builder as rb

class RealRainConformanceTest(tfds.testing.DatasetBuilderTestCase):
    """dummy_data: an RGB and a grey JPEG, an RGBA PNG, a BMP in a sub-folder."""

    DATASET_CLASS = rb.Builder
    SPLITS = {"train": 4}
    SKIP_CHECKSUMS = True



def test_formats_and_names(tmp_path):
    dummy = bt.PACKAGE_DIR / "real_rain" / "dummy_data"
    builder = bt.build(rb.Builder, dummy, tmp_path)
    assert builder.info.supervised_keys is None and set(builder.info.features.keys()) == {"rainy", "name"}
    got = {ex["name"].decode(): ex["rainy"] for ex in bt.examples(builder, "train")}
    assert set(got) == {"1", "2", "3", "night/4"}
    assert got["1"].shape == (20, 24, 3) and got["2"].shape == (18, 14, 3) and got["3"].shape == (10, 12, 3)
    assert (got["2"][..., 0] == got["2"][..., 1]).all() and (got["2"][..., 0] == got["2"][..., 2]).all()  # grey
    np.testing.assert_array_equal(got["3"], bt.noise(3, 10, 12, channels=4)[..., :3])  # alpha dropped
    np.testing.assert_array_equal(got["night/4"], bt.noise(4, 8, 10))
    # JPEGs are stored as their own bytes
    raw = builder.as_dataset(split="train", decoders={"rainy": tfds.decode.SkipDecoding()})
    stored = {ex["name"].decode(): ex["rainy"] for ex in tfds.as_numpy(raw)}
    assert stored["1"] == (dummy / "1.jpg").read_bytes() and stored["2"] == (dummy / "2.jpg").read_bytes()
    assert stored["3"].startswith(b"\x89PNG")


def test_exif_orientation_is_applied(tmp_path):
    """A JPEG tagged 'rotate 90 clockwise' (orientation 6) comes out upright, as load_rgb reads it."""
    manual = tmp_path / "manual"
    manual.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(bt.noise(7, 12, 20)).save(manual / "turned.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(bt.noise(8, 12, 20)).save(manual / "plain.jpg", quality=95)
    builder = bt.build(rb.Builder, manual, tmp_path / "tfds")
    got = {ex["name"].decode(): ex["rainy"] for ex in bt.examples(builder, "train")}
    assert got["turned"].shape == (20, 12, 3) and got["plain"].shape == (12, 20, 3)
    np.testing.assert_array_equal(got["turned"], bt.read_back(manual / "turned.jpg"))


def test_truncated_jpeg_and_clashing_names_are_named(tmp_path):
    manual = tmp_path / "manual"
    data = bt.write_image(manual / "5.jpg", bt.noise(5, 64, 64)).read_bytes()
    (manual / "5.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(pc.ImagePairError, match=r"5\.jpg: not a readable JPEG"):
        bt.build(rb.Builder, manual, tmp_path / "tfds")
    bt.write_image(manual / "5.jpg", bt.noise(5))
    bt.write_image(manual / "5.png", bt.noise(6))
    with pytest.raises(pc.ImagePairError, match=r"have the same name '5'"):
        bt.build(rb.Builder, manual, tmp_path / "tfds2")


def test_missing_manual_dir_explains_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(pc.ManualDataError) as err:
        bt.build(rb.Builder, tmp_path / "empty", tmp_path / "tfds")
    assert str(err.value).startswith("real_rain:") and "https://github.com/guyii54/JRGR" in str(err.value)
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    with pytest.raises(pc.ManualDataError, match=r"real_rain: found no image files \(.png.*it holds: notes\.txt\)"):
        bt.build(rb.Builder, tmp_path / "empty", tmp_path / "tfds")


def test_real_photos(tmp_path):
    """The 5 smallest real photos of the shared data, linked into a manual_dir."""
    data = bt.shared_data_dir()
    if data is None or not (data / "real_rain").is_dir():
        pytest.skip("shared real data ($ERL_DERAIN_SHARED_DATA/real_rain) not available")
    photos = sorted((data / "real_rain").glob("*.jpg"), key=lambda p: (p.stat().st_size, p.name))[:5]
    assert len(photos) == 5
    manual = tmp_path / "manual"
    for photo in photos:
        bt.symlink(manual / photo.name, photo)
    builder = bt.build(rb.Builder, manual, tmp_path / "tfds")
    assert builder.info.splits["train"].num_examples == 5
    got = {ex["name"].decode(): ex["rainy"] for ex in bt.examples(builder, "train")}
    assert set(got) == {p.stem for p in photos}
    for photo in photos:
        with Image.open(photo) as im:
            w, h = im.size
            pixels = np.asarray(im.convert("RGB"))
        image = got[photo.stem]
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        assert np.abs(image.astype(int) - pixels.astype(int)).mean() < 2  # same photo (decoders may differ by 1)
