"""cityscapes_rain: TFDS conformance on dummy_data (fake noise images and labelId maps in the Cityscapes
archive layout, written by ``tfds_builders.builder_testing.cityscapes_tree``), the trainId mapping,
the rain parameters, downscaling, the layouts accepted and the errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from erl_derain.data.rain_synthesis import BLUR_SIGMAS, DIRECTIONS
from tfds_builders import builder_testing as bt
from tfds_builders import paired_common as pc
from tfds_builders.cityscapes_rain import cityscapes_rain_dataset_builder as cb

DUMMY = bt.PACKAGE_DIR / "cityscapes_rain" / "dummy_data"
DUMMY_NAMES = {"train": ["aachen_000000_000019", "aachen_000000_000029", "bochum_000000_000019"],
               "val": ["frankfurt_000000_000019", "frankfurt_000000_000029"]}
VALID_TRAIN_IDS = set(range(19)) | {255}

class CityscapesRainConformanceTest(tfds.testing.DatasetBuilderTestCase):
    """dummy_data: leftImg8bit/ + gtFine/ with train (aachen x2, bochum x1) and val (frankfurt x2);
    both configs (default, full)."""

    DATASET_CLASS = cb.Builder
    SPLITS = {"train": 3, "val": 2}
    SKIP_CHECKSUMS = True



def _label_path(split: str, stem: str):
    return DUMMY / "gtFine" / split / stem.split("_")[0] / f"{stem}_gtFine_labelIds.png"


def _image_path(split: str, stem: str):
    return DUMMY / "leftImg8bit" / split / stem.split("_")[0] / f"{stem}_leftImg8bit.png"


@pytest.fixture(scope="module")
def dummy_builds(tmp_path_factory):
    """The default config built twice from dummy_data into two data_dirs."""
    return [bt.build(cb.Builder, DUMMY, tmp_path_factory.mktemp(f"tfds{run}")) for run in range(2)]


# --------------------------------------------------------------------------------------------------
# trainIds


def test_train_id_table_is_cityscapes_official():
    table = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    assert cb.TRAIN_IDS == table and len(cb.CLASS_NAMES) == cb.NUM_CLASSES == 19
    label_ids = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every listed id and all unlisted ones
    train_ids = cb.to_train_ids(label_ids)
    assert train_ids.shape == label_ids.shape and train_ids.dtype == np.uint8
    for label_id in range(256):
        assert train_ids.flat[label_id] == table.get(label_id, 255), label_id


def test_segmentation_is_the_mapped_label_map(tmp_path):
    """A hand-made labelIds map holding every labelId 0..33 plus 34 and 255 (unlisted), full config."""
    ids = np.array(list(range(34)) + [34, 255], np.uint8)
    label = np.stack([ids, ids[::-1]])  # 2 x 36
    manual = tmp_path / "manual"
    bt.write_image(manual / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png", bt.noise(1, 2, 36))
    bt.write_image(manual / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png", label)
    builder = bt.build(cb.Builder, manual, tmp_path / "tfds", config="full")
    (ex,) = bt.examples(builder, "val")
    assert ex["name"] == b"lindau_000000_000019"
    expected = np.vectorize(lambda i: cb.TRAIN_IDS.get(int(i), 255))(label).astype(np.uint8)
    np.testing.assert_array_equal(ex["segmentation"][..., 0], expected)
    assert expected[0, 34] == expected[0, 35] == 255 and expected[0, 7] == 0 and expected[0, 33] == 18


# --------------------------------------------------------------------------------------------------
# Rain


def test_rain_parameters_come_from_the_paper_and_are_deterministic(dummy_builds):
    first, second = dummy_builds
    for split, names in DUMMY_NAMES.items():
        a, b = bt.examples(first, split), bt.examples(second, split)
        assert [ex["name"].decode() for ex in a] == names
        for x, y in zip(a, b):
            assert int(x["rain_direction"]) in {int(d) for d in DIRECTIONS}
            assert float(x["rain_radius"]) in {np.float32(r) for r in BLUR_SIGMAS}
            assert x["rain_direction"] == y["rain_direction"] and x["rain_radius"] == y["rain_radius"]
            np.testing.assert_array_equal(x["rainy"], y["rainy"])
            np.testing.assert_array_equal(x["clean"], bt.read_back(_image_path(split, x["name"].decode())))
            # the additive model: rainy = clip(clean + rain), rain >= 0, and some rain was added
            assert x["rainy"].shape == x["clean"].shape == (16, 32, 3)
            assert np.all(x["rainy"] >= x["clean"]) and np.any(x["rainy"] > x["clean"])
            stem = x["name"].decode()
            _, params = cb.rain_settings(stem, 0)
            assert (x["rain_direction"], x["rain_radius"]) == (int(params.angle), np.float32(params.blur_sigma))


def test_rain_settings_cover_the_paper_sets():
    seen_dirs, seen_radii, seen_levels = set(), set(), []
    for i in range(400):
        _, params = cb.rain_settings(f"city_{i:06d}_000019", 0)
        seen_dirs.add(params.angle)
        seen_radii.add(params.blur_sigma)
        assert params.layers == 1 and not params.accumulation
    assert seen_dirs == set(DIRECTIONS) and seen_radii == set(BLUR_SIGMAS)
    assert {cb.SIZE_OF_RADIUS[r] for r in BLUR_SIGMAS} == {"small", "medium", "large"}
    # another rendering of the same image is another draw; the same one is reproduced exactly
    a = [cb.rain_settings("aachen_000000_000019", k)[1] for k in range(6)]
    assert a[0] == cb.rain_settings("aachen_000000_000019", 0)[1]
    assert len({(p.angle, p.blur_sigma, p.density) for p in a}) > 1


def test_rain_sizes_are_the_papers():
    """Section IV.C: "a filter radius of 0.2 as small size, filter radii of 0.4 and 0.6 as medium size,
    and the rest are of large size" -- the radii --exclude_rain_sizes leaves out."""
    assert cb.radii_of_sizes(["small"]) == (0.2,)
    assert cb.radii_of_sizes(["medium"]) == (0.4, 0.6)
    assert cb.radii_of_sizes(["large"]) == (0.8, 1.0)
    assert sorted(cb.radii_of_sizes(["large", "small"])) == [0.2, 0.8, 1.0]
    assert set(cb.radii_of_sizes(["small", "medium"])) | {0.8, 1.0} == set(BLUR_SIGMAS)
    assert cb.exclude_rain_sizes(["Medium "], ["rainy", "clean", "rain_radius"]) == {"rain_radius": (0.4, 0.6)}
    with pytest.raises(ValueError, match="--exclude_rain_sizes"):
        cb.radii_of_sizes(["huge"])


def test_renders_option_names_each_rendering(tmp_path):
    config = cb.CityscapesRainConfig(name="r2_test", max_side=1024, renders=2)
    builder = bt.build(cb.Builder, DUMMY, tmp_path, config=config)
    val = bt.examples(builder, "val")
    assert [ex["name"].decode() for ex in val] == [f"{n}_r{k}" for n in DUMMY_NAMES["val"] for k in (0, 1)]
    assert not np.array_equal(val[0]["rainy"], val[1]["rainy"])
    np.testing.assert_array_equal(val[0]["clean"], val[1]["clean"])


# --------------------------------------------------------------------------------------------------
# Downscaling


def test_downscaling_keeps_labels_aligned_and_nearest(tmp_path):
    """64x32 fake images, max_side 32 -> 32x16; segmentation is the nearest-neighbour resize of the
    mapped map (only trainIds / 255 appear)."""
    manual = bt.cityscapes_tree(tmp_path / "manual", {"val": {"ulm": 2}}, size=(32, 64), seed=7, extras=False)
    config = cb.CityscapesRainConfig(name="side32_test", max_side=32)
    builder = bt.build(cb.Builder, manual, tmp_path / "tfds", config=config)
    for ex in bt.examples(builder, "val"):
        stem = ex["name"].decode()
        assert ex["rainy"].shape == ex["clean"].shape == (16, 32, 3)
        assert ex["segmentation"].shape == (16, 32, 1) and ex["segmentation"].dtype == np.uint8
        assert set(np.unique(ex["segmentation"])) <= VALID_TRAIN_IDS
        label = cv2.imread(str(manual / "gtFine/val/ulm" / f"{stem}_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED)
        expected = cv2.resize(cb.to_train_ids(label), (32, 16), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(ex["segmentation"][..., 0], expected)
        image = bt.read_back(manual / "leftImg8bit/val/ulm" / f"{stem}_leftImg8bit.png")
        np.testing.assert_array_equal(ex["clean"], cv2.resize(image, (32, 16), interpolation=cv2.INTER_AREA))


def test_downscale_sizes():
    assert cb.downscale(np.zeros((1024, 2048, 3), np.uint8), 1024, cv2.INTER_AREA).shape == (512, 1024, 3)
    assert cb.downscale(np.zeros((1024, 2048, 1), np.uint8), 1024, cv2.INTER_NEAREST).shape == (512, 1024, 1)
    assert cb.downscale(np.zeros((1024, 2048), np.uint8), None, cv2.INTER_NEAREST).shape == (1024, 2048)
    assert cb.downscale(np.zeros((10, 20), np.uint8), 1024, cv2.INTER_NEAREST).shape == (10, 20)
    configs = {c.name: c for c in cb.Builder.BUILDER_CONFIGS}
    assert configs["default"].max_side == 1024 and configs["full"].max_side is None
    with pytest.raises(ValueError, match="renders"):
        cb.CityscapesRainConfig(name="bad", renders=0)


# --------------------------------------------------------------------------------------------------
# Layouts and errors


def test_each_archive_unzipped_into_its_own_folder(tmp_path):
    """<manual_dir>/leftImg8bit_trainvaltest/leftImg8bit + <manual_dir>/gtFine_trainvaltest/gtFine; the
    test split (no public labels) is ignored."""
    manual = tmp_path / "manual"
    bt.cityscapes_tree(manual / "leftImg8bit_trainvaltest", {"train": {"jena": 2}, "test": {"berlin": 1}},
                       labels_dir="unused", extras=False)
    bt.cityscapes_tree(manual / "gtFine_trainvaltest", {"train": {"jena": 2}}, images_dir="unused", extras=False)
    builder = bt.build(cb.Builder, manual, tmp_path / "tfds")
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 2}


def test_missing_label_names_the_image(tmp_path):
    manual = bt.cityscapes_tree(tmp_path / "manual" / "cityscapes", {"train": {"aachen": 1}, "val": {"lindau": 3}})
    (manual / "gtFine/val/lindau/lindau_000000_000029_gtFine_labelIds.png").unlink()
    with pytest.raises(pc.ImagePairError) as err:
        bt.build(cb.Builder, tmp_path / "manual", tmp_path / "tfds")
    msg = str(err.value)
    assert msg.startswith("cityscapes_rain:")
    assert "leftImg8bit/val/lindau/lindau_000000_000029_leftImg8bit.png has no label file" in msg
    assert "gtFine/val/lindau/lindau_000000_000029_gtFine_labelIds.png" in msg


def test_missing_gtfine_folder_is_explained(tmp_path):
    manual = bt.cityscapes_tree(tmp_path / "manual", {"val": {"lindau": 1}}, labels_dir="gtCoarse", extras=False)
    with pytest.raises(pc.ManualDataError, match=r"no gtFine/ folder.*gtFine_trainvaltest\.zip"):
        bt.build(cb.Builder, manual, tmp_path / "tfds")


def test_sizes_of_image_and_label_differ(tmp_path):
    manual = bt.cityscapes_tree(tmp_path / "manual", {"val": {"lindau": 1}}, extras=False)
    label = manual / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    bt.write_image(label, bt.cityscapes_label_ids(0, 16, 30))
    with pytest.raises(pc.ImagePairError,
                       match=r"image .*lindau_000000_000019_leftImg8bit\.png is 32x16.*label .*labelIds\.png is 30x16"):
        bt.build(cb.Builder, manual, tmp_path / "tfds")


@pytest.mark.parametrize("state", ["missing", "unrelated"])
def test_missing_manual_dir_names_dataset_and_layout(state, tmp_path):
    manual = tmp_path / "manual"
    if state == "unrelated":
        bt.write_image(manual / "holiday" / "beach.png", bt.noise(0))
    with pytest.raises(pc.ManualDataError) as err:
        bt.build(cb.Builder, manual, tmp_path / "tfds")
    msg = str(err.value)
    assert msg.startswith("cityscapes_rain:") and str(manual) in msg
    for text in ("leftImg8bit/train/<city>/<city>_<seq>_<frame>_leftImg8bit.png",
                 "gtFine/train/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png",
                 "https://www.cityscapes-dataset.com/", "leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip",
                 "DownloadConfig(manual_dir="):
        assert text in msg, text
    if state == "unrelated":
        assert "holiday/" in msg
