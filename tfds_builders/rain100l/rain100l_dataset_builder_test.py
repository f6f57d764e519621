"""rain100l: TFDS conformance on dummy_data, folder names of the two Rain100 datasets side by side, the
missing-manual_dir error, and real pairs linked as a PKU archive. (The layout variants and the
file errors are shared with rain100h and tested there.)"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from tfds_builders import builder_testing as bt
from tfds_builders import paired_common as pc
from tfds_builders.rain100l import rain100l_dataset_builder as rb

# rounded Y-PSNR of the rainy input against its clean image (as listed with the shared data; the shared pairs are
# Rain100H's, used here for the PKU layout and the pairing)
REFERENCE_PSNR = {"norain-1": 20.2456, "norain-2": 12.1808, "norain-3": 13.9642, "norain-4": 12.0426,
                  "norain-5": 10.8179}

class Rain100LConformanceTest(tfds.testing.DatasetBuilderTestCase):
    """dummy_data: RainTrainL/ as PReNet's train copy (no masks), Rain100L/ as PReNet's test copy."""

    DATASET_CLASS = rb.Builder
    SPLITS = {"train": 2, "test": 2}
    SKIP_CHECKSUMS = True



def test_dummy_data_has_no_masks(tmp_path):
    builder = bt.build(rb.Builder, bt.PACKAGE_DIR / "rain100l" / "dummy_data", tmp_path)
    test = bt.examples(builder, "test")
    assert [ex["name"] for ex in test] == [b"norain-001", b"norain-002"]
    for ex in bt.examples(builder, "train") + test:
        assert not ex["has_rain_mask"] and not ex["rain_mask"].any()


def test_picks_its_own_folders_next_to_rain100h(tmp_path):
    """Both datasets in one tree with generic train/test sub-folders: each builder reads its own."""
    manual = tmp_path / "manual"
    for level, seed in (("H", 10), ("L", 70)):
        bt.jorder_folder(manual / f"Rain100{level}" / "train", [1, 2, 3], seed=seed, masks=False)
        bt.jorder_e_folder(manual / f"Rain100{level}" / "test", [1, 2], seed=seed + 30)
    builder = bt.build(rb.Builder, manual, tmp_path / "tfds")
    for ex in bt.examples(builder, "train"):
        n = int(ex["name"].decode().split("-")[1])
        np.testing.assert_array_equal(ex["rainy"], bt.noise(70 + 2 * n))
    for ex in bt.examples(builder, "test"):
        n = int(ex["name"].decode().split("-")[1])
        np.testing.assert_array_equal(ex["rainy"], bt.noise(100 + 2 * n))


def test_other_datasets_folders_are_not_taken(tmp_path):
    bt.jorder_e_folder(tmp_path / "manual" / "Rain100H" / "test", [1, 2])
    with pytest.raises(pc.ManualDataError, match=r"rain100l: found none of the folders"):
        bt.build(rb.Builder, tmp_path / "manual", tmp_path / "tfds")


def test_missing_manual_dir_explains_what_to_do(tmp_path):
    with pytest.raises(pc.ManualDataError) as err:
        bt.build(rb.Builder, tmp_path / "nowhere", tmp_path / "tfds")
    msg = str(err.value)
    assert msg.startswith("rain100l:")
    for text in ("Rain100L", "RainTrainL", "rain_data_test_Light", "input/N.png", "https://github.com/csdwren/PReNet"):
        assert text in msg, text


def test_real_pairs_in_the_pku_archive_layout(tmp_path):
    """The 5 real pairs of the shared data linked as a PKU test archive
    ``rain_data_test_Light/rain/X2/norain-Nx2.png`` + ``norain/norain-N.png``: 5 right pairs."""
    data = bt.shared_data_dir()
    if data is None or not (data / "jorder_e_small").is_dir():
        pytest.skip("shared real data ($ERL_DERAIN_SHARED_DATA/jorder_e_small) not available")
    from erl_derain.metrics import psnr_y  # pylint: disable=import-outside-toplevel

    src = data / "jorder_e_small"
    manual = tmp_path / "manual"
    archive = manual / "rain_data_test_Light"
    for n in range(1, 6):
        bt.symlink(archive / "rain" / "X2" / f"norain-{n}x2.png", src / "rain" / f"norain-{n}.png")
        bt.symlink(archive / "norain" / f"norain-{n}.png", src / "norain" / f"norain-{n}.png")
    builder = bt.build(rb.Builder, manual, tmp_path / "tfds")
    assert set(builder.info.splits.keys()) == {"test"}
    test = bt.examples(builder, "test")
    assert len(test) == 5 and [ex["name"].decode() for ex in test] == sorted(REFERENCE_PSNR)
    for ex in test:
        assert ex["rainy"].shape == ex["clean"].shape == (321, 481, 3)
        assert psnr_y(ex["rainy"], ex["clean"]) == pytest.approx(REFERENCE_PSNR[ex["name"].decode()], abs=1e-3)
