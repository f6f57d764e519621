"""did: TFDS conformance on dummy_data, the side-by-side split (rainy = left half), densities, odd and
too-narrow widths, and the missing-manual_dir error."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from tfds_builders import builder_testing as bt
from tfds_builders import paired_common as pc
from tfds_builders.did import did_dataset_builder as db

class DidConformanceTest(tfds.testing.DatasetBuilderTestCase):
    """dummy_data: 2 heavy, 1 medium, 1 light training files, 2 test files."""

    DATASET_CLASS = db.Builder
    SPLITS = {"train": 4, "test": 2}
    SKIP_CHECKSUMS = True



def _flat(value, h=8, w=10):
    return np.full((h, w, 3), value, np.uint8)


def test_rainy_is_the_left_half_and_density_comes_from_the_folder(tmp_path):
    manual = tmp_path / "manual"
    train = manual / "DID-MDN-training"
    bt.write_image(train / "Rain_Heavy" / "train2018new" / "0.png", bt.side_by_side(_flat(200), _flat(50)))
    bt.write_image(train / "Rain_Medium" / "train2018new" / "0.png", bt.side_by_side(_flat(201), _flat(51)))
    bt.write_image(train / "Rain_Light" / "0.png", bt.side_by_side(_flat(202), _flat(52)))  # no train2018new/
    # odd width 2*10+1: both halves 10 wide, the last column (value 9) dropped
    odd = np.concatenate([_flat(203), _flat(53), _flat(9, w=1)], axis=1)
    bt.write_image(manual / "DID-MDN-test" / "7.png", odd)
    builder = bt.build(db.Builder, manual, tmp_path / "tfds")
    density = builder.info.features["density"]
    got = {ex["name"].decode(): ex for ex in bt.examples(builder, "train") + bt.examples(builder, "test")}
    expected = {"heavy_0": (200, "heavy"), "medium_0": (201, "medium"), "light_0": (202, "light"),
                "7": (203, "unknown")}
    assert set(got) == set(expected)
    for name, (rainy_value, label) in expected.items():
        ex = got[name]
        assert ex["rainy"].shape == ex["clean"].shape == (8, 10, 3)
        assert (ex["rainy"] == rainy_value).all() and (ex["clean"] == rainy_value - 150).all()
        assert density.int2str(ex["density"]) == label


def test_too_narrow_file_is_named(tmp_path):
    bt.write_image(tmp_path / "manual" / "DID-MDN-test" / "3.png", _flat(100, w=1))
    with pytest.raises(pc.ImagePairError, match=r"DID-MDN-test/3\.png: 1x8 pixels is too narrow"):
        bt.build(db.Builder, tmp_path / "manual", tmp_path / "tfds")


def test_unreadable_file_is_named(tmp_path):
    bt.did_tree(tmp_path / "manual", {"Heavy": 1}, 1)
    (tmp_path / "manual" / "DID-MDN-test" / "0.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(pc.ImagePairError, match=r"DID-MDN-test/0\.jpg: not a readable image"):
        bt.build(db.Builder, tmp_path / "manual", tmp_path / "tfds")


def test_missing_manual_dir_explains_what_to_do(tmp_path):
    with pytest.raises(pc.ManualDataError) as err:
        bt.build(db.Builder, tmp_path / "nowhere", tmp_path / "tfds")
    msg = str(err.value)
    assert msg.startswith("did:")
    for text in ("DID-MDN-training/", "Rain_Heavy/train2018new/", "DID-MDN-test/", "left half",
                 "https://github.com/hezhangsprinter/DID-MDN"):
        assert text in msg, text
