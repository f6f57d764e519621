"""paired_common: the shared helpers of the manual-download builders (no TFDS build)."""

from __future__ import annotations

import numpy as np
import pytest

from tfds_builders import builder_testing as bt
from tfds_builders import paired_common as pc


def test_natural_sorting_and_keys():
    assert sorted(["2_14", "10_2", "2_3"], key=pc.natural_key) == ["2_3", "2_14", "10_2"]
    assert sorted(["rain-10", "rain-2", "rain-1"], key=pc.natural_key) == ["rain-1", "rain-2", "rain-10"]
    assert pc.canonical_key("001") == pc.canonical_key("1") == "1" and pc.canonical_key("a1") == "a1"
    assert pc.norm_name("Rainy Image") == pc.norm_name("rainy_image") == pc.norm_name("RAINY-image")


def test_split_side_by_side_even_odd_and_narrow():
    img = np.arange(2 * 7 * 3, dtype=np.uint8).reshape(2, 7, 3)  # odd width 7: halves of 3, last column dropped
    rainy, clean = pc.split_side_by_side(img, "f.jpg", "left")
    np.testing.assert_array_equal(rainy, img[:, :3])
    np.testing.assert_array_equal(clean, img[:, 3:6])
    rainy, clean = pc.split_side_by_side(img[:, :6], "f.jpg", "right")
    np.testing.assert_array_equal(rainy, img[:, 3:6])
    np.testing.assert_array_equal(clean, img[:, :3])
    with pytest.raises(pc.ImagePairError, match=r"thin\.jpg: 1x2 pixels is too narrow"):
        pc.split_side_by_side(img[:, :1], "thin.jpg", "left")
    with pytest.raises(ValueError, match="rainy_side"):
        pc.split_side_by_side(img, "f.jpg", "top")


def test_errors_are_value_errors_naming_files(tmp_path):
    assert issubclass(pc.ManualDataError, ValueError) and issubclass(pc.ImagePairError, ValueError)
    with pytest.raises(pc.ImagePairError, match=r"image sizes differ .*a\.png is 4x3, clean b\.png is 5x3"):
        pc.check_same_size(rainy=(np.zeros((3, 4, 3)), "a.png"), clean=(np.zeros((3, 5, 3)), "b.png"))
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(pc.ImagePairError, match=r"x\.png"):
        pc.read_rgb(tmp_path / "x.png")
    grey = bt.write_image(tmp_path / "g.png", bt.noise(0, channels=1))
    assert pc.read_rgb(grey).shape == (bt.H, bt.W, 3) and pc.read_rgb(grey).dtype == np.uint8


def test_split_folder_search(tmp_path):
    bt.jorder_e_folder(tmp_path / "a" / "Rain100H", [1])
    bt.jorder_e_folder(tmp_path / "b" / "Rain100H", [1])
    bt.jorder_e_folder(tmp_path / "c" / "d" / "Rain100H", [1])
    folders = pc.walk_folders(tmp_path)
    with pytest.raises(pc.ManualDataError, match=r"several folders could be the same split"):
        pc.find_split_folder(folders, ["Rain100H"], pc.rain100_sources)
    folder, sources = pc.find_split_folder(pc.walk_folders(tmp_path / "c"), ["Rain100H"], pc.rain100_sources)
    assert folder.rel == ("d", "Rain100H") and [s.name for s in sources] == ["norain-1"]
    assert pc.find_split_folder(folders, ["test"], pc.rain100_sources) is None
