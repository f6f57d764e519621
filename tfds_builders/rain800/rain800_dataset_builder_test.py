"""rain800: TFDS conformance on dummy_data (both configs), which half is rainy, folder names, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from tfds_builders import builder_testing as bt
from tfds_builders import paired_common as pc
from tfds_builders.rain800 import rain800_dataset_builder as rb

class Rain800ConformanceTest(tfds.testing.DatasetBuilderTestCase):
    """dummy_data: training/ (3 files), test_syn/ (2 files); built with both configs."""

    DATASET_CLASS = rb.Builder
    SPLITS = {"train": 3, "test": 2}
    SKIP_CHECKSUMS = True



def test_default_config_is_the_authors_rainy_right():
    assert rb.Builder.DEFAULT_BUILDER_CONFIG_NAME == "rainy_right"
    assert tfds.builder("rain800", data_dir="/nonexistent").builder_config.rainy_side == "right"


@pytest.mark.parametrize("config,rainy_value", [("rainy_right", 200), ("rainy_left", 50)])
def test_rainy_half_follows_the_config(config, rainy_value, tmp_path):
    manual = tmp_path / "manual"
    left, right = np.full((8, 10, 3), 50, np.uint8), np.full((8, 10, 3), 200, np.uint8)
    bt.write_image(manual / "train" / "1.png", bt.side_by_side(left, right))  # generic folder names
    bt.write_image(manual / "test" / "1.png", bt.side_by_side(left + 1, right + 1))
    builder = bt.build(rb.Builder, manual, tmp_path / "tfds", config=config)
    for split, offset in (("train", 0), ("test", 1)):
        (ex,) = bt.examples(builder, split)
        assert ex["name"] == b"1" and ex["rainy"].shape == (8, 10, 3)
        assert (ex["rainy"] == rainy_value + offset).all() and (ex["clean"] == 250 - rainy_value + offset).all()


def test_missing_manual_dir_explains_what_to_do(tmp_path):
    with pytest.raises(pc.ManualDataError) as err:
        bt.build(rb.Builder, tmp_path / "nowhere", tmp_path / "tfds")
    msg = str(err.value)
    assert msg.startswith("rain800:")
    for text in ("training/", "test_syn/", "rainy_right", "https://github.com/hezhangsprinter/ID-CGAN"):
        assert text in msg, text
