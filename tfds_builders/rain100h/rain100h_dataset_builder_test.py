"""rain100h: TFDS conformance on dummy_data, every layout variant, masks, the errors, and the real
Rain100H pairs of the shared data (JORDER-E layout)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from tfds_builders import builder_testing as bt
from tfds_builders import paired_common as pc
from tfds_builders.rain100h import rain100h_dataset_builder as rb

# rounded Y-PSNR of the rainy input against its clean image (as listed with the shared data)
REFERENCE_PSNR = {"norain-1": 20.2456, "norain-2": 12.1808, "norain-3": 13.9642, "norain-4": 12.0426,
                  "norain-5": 10.8179}

class Rain100HConformanceTest(tfds.testing.DatasetBuilderTestCase):
    """dummy_data: RainTrainH/ in the original JORDER layout (with masks), Rain100H/ as the PKU archive."""

    DATASET_CLASS = rb.Builder
    SPLITS = {"train": 3, "test": 2}
    SKIP_CHECKSUMS = True



def test_masks_from_rainregion_files(tmp_path):
    builder = bt.build(rb.Builder, bt.PACKAGE_DIR / "rain100h" / "dummy_data", tmp_path)
    train = bt.examples(builder, "train")
    assert [ex["name"] for ex in train] == [b"norain-1", b"norain-2", b"norain-3"]
    for n, ex in enumerate(train, start=1):
        assert ex["has_rain_mask"]
        written = cv2.imread(str(bt.PACKAGE_DIR / "rain100h/dummy_data/RainTrainH" / f"rainregion-{n}.png"), 0)
        np.testing.assert_array_equal(ex["rain_mask"][..., 0], (written > 0).astype(np.uint8))
        assert ex["rain_mask"].dtype == np.uint8 and set(np.unique(ex["rain_mask"])) <= {0, 1}
        assert 0 < ex["rain_mask"].mean() < 1
    for ex in bt.examples(builder, "test"):  # the PKU archive has no masks
        assert not ex["has_rain_mask"]
        assert ex["rain_mask"].shape == ex["rainy"].shape[:2] + (1,) and not ex["rain_mask"].any()


def _check_pairs(examples, seed: int, prefix: str = "norain-", width: int = 0):
    """Each example holds the images written for its number: rainy = noise(seed+2n), clean = noise(seed+2n+1)."""
    for ex in examples:
        n = int(ex["name"].decode()[len(prefix):])
        np.testing.assert_array_equal(ex["rainy"], bt.noise(seed + 2 * n))
        np.testing.assert_array_equal(ex["clean"], bt.noise(seed + 2 * n + 1))
        assert ex["name"].decode() == f"{prefix}{n:0{width}d}"


LAYOUTS = {
    # id: (train folder, train writer, test folder, test writer, test name prefix/width)
    "jorder_and_pku": ("RainTrainH", bt.jorder_folder, "Rain100H", bt.pku_folder, ("norain-", 0)),
    "pku_archive_names": ("rain_data_train_Heavy", bt.pku_folder, "rain_data_test_Heavy", bt.jorder_e_folder,
                          ("norain-", 0)),
    "prenet_copies": ("datasets/train/RainTrainH", bt.jorder_folder, "datasets/test/Rain100H", bt.prenet_test_folder,
                      ("norain-", 3)),
    "generic_names_rain13k": ("train", bt.jorder_e_folder, "test", bt.rain13k_folder, ("", 0)),
    "archive_top_folder": ("Rain100H_all/RainTrainH", bt.jorder_folder, "Rain100H_all/Rain100H", bt.rain13k_folder,
                           ("", 0)),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_variants(layout, tmp_path):
    train_dir, train_writer, test_dir, test_writer, (prefix, width) = LAYOUTS[layout]
    manual = tmp_path / "manual"
    train_writer(manual / train_dir, [1, 2, 3], seed=10)
    test_writer(manual / test_dir, [1, 2], seed=60)
    builder = bt.build(rb.Builder, manual, tmp_path / "tfds")
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 3, "test": 2}
    train, test = bt.examples(builder, "train"), bt.examples(builder, "test")
    _check_pairs(train, 10)
    _check_pairs(test, 60, prefix, width)
    assert all(bool(ex["has_rain_mask"]) == (train_writer is bt.jorder_folder) for ex in train)


def test_only_the_splits_found_are_built(tmp_path):
    bt.pku_folder(tmp_path / "manual" / "Rain100H", [1, 2, 3])
    builder = bt.build(rb.Builder, tmp_path / "manual", tmp_path / "tfds")
    assert set(builder.info.splits.keys()) == {"test"}
    assert builder.info.splits["test"].num_examples == 3


def test_manual_dir_is_the_split_folder_itself(tmp_path):
    manual = bt.jorder_e_folder(tmp_path / "Rain100H", [1, 2])
    builder = bt.build(rb.Builder, manual, tmp_path / "tfds")
    assert set(builder.info.splits.keys()) == {"test"}


@pytest.mark.parametrize("state", ["missing", "empty", "unrelated"])
def test_missing_manual_dir_explains_what_to_do(state, tmp_path):
    manual = tmp_path / "manual"
    if state != "missing":
        manual.mkdir()
    if state == "unrelated":
        bt.write_image(manual / "holiday" / "beach.png", bt.noise(0))
    with pytest.raises(pc.ManualDataError) as err:
        bt.build(rb.Builder, manual, tmp_path / "tfds")
    msg = str(err.value)
    assert msg.startswith("rain100h:") and str(manual) in msg
    for text in ("Rain100H", "RainTrainH", "rain/X2/norain-Nx2.png", "norain/norain-N.png", "rainregion-N.png",
                 "https://www.icst.pku.edu.cn/struct/Projects/joint_rain_removal.html", "DownloadConfig(manual_dir="):
        assert text in msg, text
    if state == "unrelated":
        assert "holiday/" in msg  # lists what the manual_dir holds


def test_mismatched_sizes_name_both_files(tmp_path):
    manual = bt.jorder_folder(tmp_path / "manual" / "RainTrainH", [1, 2], masks=False)
    bt.write_image(manual / "norain-2.png", bt.noise(5, bt.H + 2, bt.W))
    with pytest.raises(pc.ImagePairError, match=r"rain-2\.png is 16x12.*norain-2\.png is 16x14"):
        bt.build(rb.Builder, tmp_path / "manual", tmp_path / "tfds")


def test_mask_of_another_size_is_named(tmp_path):
    manual = bt.jorder_folder(tmp_path / "manual" / "RainTrainH", [1])
    bt.write_mask(manual / "rainregion-1.png", 0, bt.H, bt.W + 4)
    with pytest.raises(pc.ImagePairError, match=r"rainregion-1\.png"):
        bt.build(rb.Builder, tmp_path / "manual", tmp_path / "tfds")


def test_unreadable_file_is_named(tmp_path):
    manual = bt.pku_folder(tmp_path / "manual" / "Rain100H", [1, 2])
    (manual / "norain" / "norain-2.png").write_bytes(b"not a png at all")
    with pytest.raises(pc.ImagePairError, match=r"norain-2\.png: not a readable image"):
        bt.build(rb.Builder, tmp_path / "manual", tmp_path / "tfds")


def test_rainy_file_without_partner_is_named(tmp_path):
    manual = bt.pku_folder(tmp_path / "manual" / "Rain100H", [1, 2, 3])
    (manual / "norain" / "norain-2.png").unlink()
    with pytest.raises(pc.ImagePairError, match=r"rain/X2/norain-2x2\.png has no clean partner: no norain-2\.\*"):
        bt.build(rb.Builder, tmp_path / "manual", tmp_path / "tfds")


def test_real_rain100h_test_pairs(tmp_path):
    """The 5 real Rain100H test pairs (shared data, JORDER-E layout), linked as the distributed archive
    ``Rain100H/rain/norain-N.png`` + ``Rain100H/norain/norain-N.png``: each example is the right pair."""
    data = bt.shared_data_dir()
    if data is None or not (data / "jorder_e_small").is_dir():
        pytest.skip("shared real data ($ERL_DERAIN_SHARED_DATA/jorder_e_small) not available")
    from erl_derain.metrics import psnr_y  # pylint: disable=import-outside-toplevel

    src = data / "jorder_e_small"
    manual = tmp_path / "manual"
    for n in range(1, 6):
        bt.symlink(manual / "Rain100H" / "rain" / f"norain-{n}.png", src / "rain" / f"norain-{n}.png")
        bt.symlink(manual / "Rain100H" / "norain" / f"norain-{n}.png", src / "norain" / f"norain-{n}.png")
    builder = bt.build(rb.Builder, manual, tmp_path / "tfds")
    assert set(builder.info.splits.keys()) == {"test"}
    test = bt.examples(builder, "test")
    assert [ex["name"].decode() for ex in test] == sorted(REFERENCE_PSNR)
    for ex in test:
        name = ex["name"].decode()
        assert ex["rainy"].shape == ex["clean"].shape == (321, 481, 3)
        assert ex["rainy"].dtype == ex["clean"].dtype == np.uint8
        assert not ex["has_rain_mask"]
        assert psnr_y(ex["rainy"], ex["clean"]) == pytest.approx(REFERENCE_PSNR[name], abs=1e-3)
        # exactly the file's pixels
        np.testing.assert_array_equal(ex["rainy"], cv2.imread(str(src / "rain" / f"{name}.png"))[..., ::-1])


def test_every_bad_file_is_reported_in_one_error(tmp_path):
    """A build does not die at the first bad pair: it lists all of them (unreadable, zero-byte,
    truncated, sizes that differ) at the end."""
    manual = bt.pku_folder(tmp_path / "manual" / "Rain100H", [1, 2, 3, 4, 5])
    (manual / "norain" / "norain-2.png").write_bytes(b"not a png at all")
    (manual / "norain" / "norain-3.png").write_bytes(b"")
    data = (manual / "norain" / "norain-4.png").read_bytes()
    (manual / "norain" / "norain-4.png").write_bytes(data[: len(data) // 2])
    bt.write_image(manual / "norain" / "norain-5.png", bt.noise(5, bt.H + 2, bt.W))
    with pytest.raises(pc.ImagePairError) as err:
        bt.build(rb.Builder, tmp_path / "manual", tmp_path / "tfds")
    msg = str(err.value)
    assert "4 bad example(s) of 5" in msg
    for n in (2, 3, 4, 5):
        assert f"norain-{n}.png" in msg, n
    assert "norain-1.png" not in msg
