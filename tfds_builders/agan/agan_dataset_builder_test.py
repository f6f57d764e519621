"""agan: TFDS conformance on dummy_data (train, test_a, test_b), pairing on N, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from tfds_builders import builder_testing as bt
from tfds_builders import paired_common as pc
from tfds_builders.agan import agan_dataset_builder as ab

class AganConformanceTest(tfds.testing.DatasetBuilderTestCase):
    """dummy_data: train (2 png pairs), test_a (1 png pair), test_b (2 jpg pairs)."""

    DATASET_CLASS = ab.Builder
    SPLITS = {"train": 2, "test_a": 1, "test_b": 2}
    SKIP_CHECKSUMS = True



def test_pairs_match_on_the_number(tmp_path):
    manual = tmp_path / "manual" / "raindrop_data"  # one level down
    for n in (10, 2, 1):  # natural order, numbers compared as numbers
        bt.write_image(manual / "train" / "data" / f"{n}_rain.png", bt.noise(2 * n))
        bt.write_image(manual / "train" / "gt" / f"{n}_clean.png", bt.noise(2 * n + 1))
    builder = bt.build(ab.Builder, tmp_path / "manual", tmp_path / "tfds")
    assert set(builder.info.splits.keys()) == {"train"}
    train = bt.examples(builder, "train")
    assert sorted(ex["name"].decode() for ex in train) == ["10_clean", "1_clean", "2_clean"]
    for ex in train:
        n = int(ex["name"].decode().split("_")[0])
        np.testing.assert_array_equal(ex["rainy"], bt.noise(2 * n))
        np.testing.assert_array_equal(ex["clean"], bt.noise(2 * n + 1))


def test_rainy_file_without_partner_and_size_mismatch_are_named(tmp_path):
    bt.agan_tree(tmp_path / "a", {"test_a": (2, "png")})
    (tmp_path / "a" / "test_a" / "gt" / "1_clean.png").unlink()
    with pytest.raises(pc.ImagePairError, match=r"test_a/data/1_rain\.png has no clean partner: no 1_clean\.\*"):
        bt.build(ab.Builder, tmp_path / "a", tmp_path / "tfds_a")
    bt.agan_tree(tmp_path / "b", {"test_b": (2, "jpg")})
    bt.write_image(tmp_path / "b" / "test_b" / "gt" / "0_clean.jpg", bt.noise(0, bt.H, bt.W + 2))
    with pytest.raises(pc.ImagePairError, match=r"0_rain\.jpg is 16x12, clean .*0_clean\.jpg is 18x12"):
        bt.build(ab.Builder, tmp_path / "b", tmp_path / "tfds_b")


def test_missing_manual_dir_explains_what_to_do(tmp_path):
    with pytest.raises(pc.ManualDataError) as err:
        bt.build(ab.Builder, tmp_path / "nowhere", tmp_path / "tfds")
    msg = str(err.value)
    assert msg.startswith("agan:")
    for text in ("train/data/0_rain.png", "test_a/gt/0_clean.png", "test_b", "https://github.com/rui1996/DeRaindrop"):
        assert text in msg, text
