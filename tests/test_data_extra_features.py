"""``extra_features`` of the paired streams: per-pixel maps of a TFDS dataset cut with the images
(the same crop and flip, scale and rotation, ten crops, centre crop), other features passed through,
each under its own name; no feature name is special; ``dataset_features`` says what a dataset has.

The images encode their coordinates (R = x, G = y, B = a per-image tag) and so do the maps: the
``xmap`` holds x and the ``ymap`` y, so a map can be checked against the window of its images.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from erl_derain.data import pipelines, streams
from erl_derain.data.pipelines import DatasetError, paired_dataset

from .conftest import make_folder_dataset

tfds.disable_progress_bar()

SPECS = [(f"e{i}", 16 + (i * 3) % 7, 18 + (i * 5) % 9) for i in range(6)]  # (name, height, width)
CROP = 10
NAME = "data_extras_pairs"


def coord_image(height, width, tag):
    y, x = np.mgrid[:height, :width]
    return np.stack([x, y, np.full_like(x, tag)], axis=-1).astype(np.uint8)


class DataExtrasPairs(tfds.core.GeneratorBasedBuilder):
    """Six coordinate pairs with two coordinate maps and two scalars, under names the pipelines
    have never heard of ('data_extras_pairs')."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "rainy": tfds.features.Image(shape=(None, None, 3)),
            "clean": tfds.features.Image(shape=(None, None, 3)),
            "name": tfds.features.Text(),
            "xmap": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
            "ymap": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
            "flag": tfds.features.Tensor(shape=(), dtype=np.bool_),
            "level": tfds.features.Scalar(dtype=np.float32),
            "segmentation": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8)}))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, (name, h, w) in enumerate(SPECS):
            y, x = np.mgrid[:h, :w]
            yield name, {"rainy": coord_image(h, w, 2 * i), "clean": coord_image(h, w, 2 * i + 1), "name": name,
                         "xmap": x[..., None].astype(np.uint8), "ymap": y[..., None].astype(np.uint8),
                         "flag": bool(i % 2), "level": 0.5 * i,
                         "segmentation": np.full((h, w, 1), i, np.uint8)}


INDEX = {name: i for i, (name, _, _) in enumerate(SPECS)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    DataExtrasPairs(data_dir=path).download_and_prepare()
    return path


def take(ds, n):
    """The first `n` examples of a batched stream as dicts of numpy values."""
    out = []
    for batch in ds:
        for j in range(batch["name"].shape[0]):
            out.append({k: v[j].numpy() for k, v in batch.items()})
            if len(out) == n:
                return out
    return out


def check_maps_follow_images(example, tolerance=0):
    """xmap/ymap hold the x/y that rainy's R/G hold, pixel for pixel (the same window, flip, turn)."""
    r = np.round(example["rainy"] * 255).astype(int)
    c = np.round(example["clean"] * 255).astype(int)
    np.testing.assert_array_equal(r[..., :2], c[..., :2])
    for key, channel in (("xmap", 0), ("ymap", 1)):
        assert example[key].dtype == np.uint8 and example[key].shape == r.shape[:2] + (1,)
        assert np.abs(example[key][..., 0].astype(int) - r[..., channel]).max() <= tolerance, key


def test_dataset_features_lists_maps_and_values(data_dir, tmp_path):
    assert pipelines.dataset_features(NAME, data_dir=data_dir) == {
        "xmap": streams.MAP, "ymap": streams.MAP, "segmentation": streams.MAP,
        "flag": streams.VALUE, "level": streams.VALUE}
    folder = make_folder_dataset(tmp_path / "pairs", n=1, size=(16, 16))
    assert pipelines.dataset_features(f"folder:{folder}") == {}


@pytest.mark.parametrize("cache_limit_bytes", [None, 0], ids=["cached", "streamed"])
def test_training_cuts_maps_with_the_images_and_passes_values(data_dir, cache_limit_bytes):
    kw = dict(batch_size=2, crop_size=CROP, seed=3, data_dir=data_dir, shuffle_buffer=3,
              cache_limit_bytes=cache_limit_bytes)
    got = take(paired_dataset(NAME, extra_features=("xmap", "ymap", "flag", "level"), **kw), 18)
    assert set(got[0]) == {"rainy", "clean", "name", "xmap", "ymap", "flag", "level"}
    flips = set()
    for ex in got:
        i = INDEX[ex["name"].decode()]
        assert ex["rainy"].shape == (CROP, CROP, 3)
        check_maps_follow_images(ex)
        assert ex["flag"] == bool(i % 2) and ex["flag"].dtype == np.bool_
        assert ex["level"] == pytest.approx(0.5 * i)
        flips.add(bool(ex["xmap"][0, 0, 0] > ex["xmap"][0, -1, 0]))
    assert flips == {True, False}
    # The window and the flip do not depend on the maps stacked with the images, nor does the order.
    for extra in ((), ("ymap",), ("segmentation", "xmap")):
        other = take(paired_dataset(NAME, extra_features=extra, **kw), 18)
        assert set(other[0]) == {"rainy", "clean", "name", *extra}
        for a, b in zip(got, other):
            assert a["name"] == b["name"]
            np.testing.assert_array_equal(a["rainy"], b["rainy"])
    # Resuming yields what the uninterrupted stream yields, maps included.
    tail = take(paired_dataset(NAME, extra_features=("xmap", "ymap", "flag", "level"), start_index=6, **kw), 12)
    for a, b in zip(got[6:], tail):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_scale_rotate_scales_flips_and_turns_maps_with_the_images(data_dir):
    got = take(paired_dataset(NAME, batch_size=1, crop_size=CROP, seed=5, data_dir=data_dir,
                              crop_mode="scale_rotate", extra_features=("xmap", "ymap")), 24)
    orientations = set()
    for ex in got:
        # Bilinear (antialiased) images and nearest maps of the same resize differ by under a pixel
        # step of the source ramp; the half turn and the flip act on both alike.
        check_maps_follow_images(ex, tolerance=2)
        x, y = ex["xmap"][..., 0].astype(int), ex["ymap"][..., 0].astype(int)
        orientations.add((np.sign(x[:, -1].mean() - x[:, 0].mean()), np.sign(y[-1].mean() - y[0].mean())))
    assert orientations == {(1, 1), (-1, 1), (-1, -1), (1, -1)}


@pytest.mark.parametrize("cache_limit_bytes", [None, 0], ids=["cached", "streamed"])
def test_ten_crop_cuts_maps_with_the_images(data_dir, cache_limit_bytes):
    got = take(paired_dataset(NAME, batch_size=4, crop_size=CROP, seed=2, data_dir=data_dir, crop_mode="ten_crop",
                              shuffle_buffer=3, cache_limit_bytes=cache_limit_bytes,
                              extra_features=("xmap", "ymap", "level")), 10 * len(SPECS))
    windows = set()
    for ex in got:
        check_maps_follow_images(ex)
        assert ex["level"] == pytest.approx(0.5 * INDEX[ex["name"].decode()])
        x, y = ex["xmap"][..., 0], ex["ymap"][..., 0]
        windows.add((ex["name"].decode(), int(x[0, 0]), int(x[0, -1]), int(y[0, 0])))
    assert len(windows) == 10 * len(SPECS)  # every (image, crop) once in an epoch
    default = take(paired_dataset(NAME, batch_size=4, crop_size=CROP, seed=2, data_dir=data_dir,
                                  crop_mode="ten_crop", shuffle_buffer=3, cache_limit_bytes=cache_limit_bytes), 20)
    assert set(default[0]) == {"rainy", "clean", "name"}  # the default carries nothing with ten_crop
    for a, b in zip(got, default):
        np.testing.assert_array_equal(a["rainy"], b["rainy"])


def test_evaluation_centre_crops_maps_and_carries_only_what_is_asked(data_dir):
    got = take(paired_dataset(NAME, batch_size=1, crop_size=CROP, training=False, data_dir=data_dir,
                              extra_features=("ymap", "flag")), 10)
    assert sorted(ex["name"].decode() for ex in got) == [n for n, _, _ in SPECS]  # one pass, in file order
    for ex in got:
        _, h, w = SPECS[INDEX[ex["name"].decode()]]
        assert set(ex) == {"rainy", "clean", "name", "ymap", "flag"}
        r = np.round(ex["rainy"] * 255).astype(int)
        assert (r[0, 0, 0], r[0, 0, 1]) == ((w - CROP) // 2, (h - CROP) // 2)
        np.testing.assert_array_equal(ex["ymap"][..., 0], r[..., 1])
    full = take(paired_dataset(NAME, training=False, data_dir=data_dir, extra_features=("xmap",)), 1)[0]
    _, h, w = SPECS[INDEX[full["name"].decode()]]
    assert full["xmap"].shape == (h, w, 1)
    none = take(paired_dataset(NAME, training=False, data_dir=data_dir, extra_features=()), 1)[0]
    assert set(none) == {"rainy", "clean", "name"}


def test_default_carries_no_extra_feature(data_dir):
    """A caller names the features it needs (the methods' paired_features, evaluation's rain masks)."""
    train = take(paired_dataset(NAME, crop_size=CROP, data_dir=data_dir), 1)[0]
    assert set(train) == {"rainy", "clean", "name"}
    evaluation = take(paired_dataset(NAME, training=False, data_dir=data_dir), 1)[0]
    assert set(evaluation) == {"rainy", "clean", "name"}


def test_feature_errors_name_the_feature(data_dir, tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)no feature 'depth'.*'xmap'"):
        paired_dataset(NAME, crop_size=CROP, data_dir=data_dir, extra_features=("xmap", "depth"))
    with pytest.raises(DatasetError, match="always in the batch"):
        paired_dataset(NAME, crop_size=CROP, data_dir=data_dir, extra_features=("name",))
    folder = make_folder_dataset(tmp_path / "pairs", n=1, size=(16, 16))
    with pytest.raises(DatasetError, match="folder of image pairs, without features"):
        paired_dataset(f"folder:{folder}", crop_size=8, extra_features=("segmentation",))
    assert next(iter(paired_dataset(f"folder:{folder}", crop_size=8, extra_features=())))["rainy"].shape[0] == 1
