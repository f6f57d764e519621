"""ddn: TFDS conformance on dummy_data, the split by clean image (none in both splits), PReNet's copy,
and the errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from tfds_builders import builder_testing as bt
from tfds_builders import paired_common as pc
from tfds_builders.ddn import ddn_dataset_builder as db

class DdnConformanceTest(tfds.testing.DatasetBuilderTestCase):
    """dummy_data: Rain14000/{rainy image,ground truth} with clean images 1, 2, 901 x 2 renderings."""

    DATASET_CLASS = db.Builder
    SPLITS = {"train": 4, "test": 2}
    SKIP_CHECKSUMS = True



def _clean_ids(examples):
    return {int(ex["name"].decode().split("_")[0]) for ex in examples}


def test_no_clean_image_in_both_splits(tmp_path):
    builder = bt.build(db.Builder, bt.PACKAGE_DIR / "ddn" / "dummy_data", tmp_path)
    train, test = bt.examples(builder, "train"), bt.examples(builder, "test")
    assert [ex["name"] for ex in train] == [b"1_1", b"1_2", b"2_1", b"2_2"]
    assert [ex["name"] for ex in test] == [b"901_1", b"901_2"]
    assert _clean_ids(train) == {1, 2} and _clean_ids(test) == {901}
    digest = lambda ex: hashlib.sha1(ex["clean"].tobytes()).hexdigest()  # noqa: E731
    assert not {digest(ex) for ex in train} & {digest(ex) for ex in test}
    for ex in train + test:  # each rendering sits with its own clean image
        n = int(ex["name"].decode().split("_")[0])
        ref = bt.read_back(bt.PACKAGE_DIR / "ddn/dummy_data/Rain14000/ground truth" / f"{n}.jpg")
        np.testing.assert_array_equal(ex["clean"], ref)


def test_prenet_copy_splits_by_clean_image_number(tmp_path):
    """PReNet's train/ and test/ folders; a clean image numbered 900 filed under test/ still goes to train."""
    manual = tmp_path / "manual"
    bt.ddn_folder(manual / "train", [1, 2], [1, 14], rainy="rainy_image", clean="ground_truth")
    bt.ddn_folder(manual / "test", [900, 901, 1000], [3], rainy="rainy_image", clean="ground_truth")
    builder = bt.build(db.Builder, manual, tmp_path / "tfds")
    train, test = bt.examples(builder, "train"), bt.examples(builder, "test")
    assert _clean_ids(train) == {1, 2, 900} and _clean_ids(test) == {901, 1000}
    assert len(train) == 5 and len(test) == 2


def test_only_the_test_part(tmp_path):
    bt.ddn_folder(tmp_path / "manual" / "Rain1400", [905, 906], [1, 2])
    builder = bt.build(db.Builder, tmp_path / "manual", tmp_path / "tfds")
    assert set(builder.info.splits.keys()) == {"test"} and builder.info.splits["test"].num_examples == 4


def test_missing_clean_image_and_duplicates_are_named(tmp_path):
    manual = bt.ddn_folder(tmp_path / "manual", [1, 2], [1])
    (manual / "ground truth" / "2.jpg").unlink()
    with pytest.raises(pc.ImagePairError, match=r"rainy image/2_1\.jpg has no clean partner: no 2\.\*"):
        bt.build(db.Builder, manual, tmp_path / "tfds")
    other = bt.ddn_folder(tmp_path / "manual2", [1], [1])
    bt.ddn_folder(other / "copy", [1], [1])
    with pytest.raises(pc.ImagePairError, match=r"both rendering 1_1"):
        bt.build(db.Builder, other, tmp_path / "tfds2")


def test_missing_manual_dir_explains_what_to_do(tmp_path):
    with pytest.raises(pc.ManualDataError) as err:
        bt.build(db.Builder, tmp_path / "nowhere", tmp_path / "tfds")
    msg = str(err.value)
    assert msg.startswith("ddn:")
    for text in ("DDN-Data", "rainy image/", "ground truth/", "N_K", "1-900",
                 "https://xueyangfu.github.io/projects/cvpr2017.html"):
        assert text in msg, text
