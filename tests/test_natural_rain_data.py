"""Rain over a folder of natural photos (synthetic_rain/natural with --clean_dir): the folder is read with
its sub-folders, the validation photos (kodak24/, val20/) are the test split, and --clean_exclude leaves
out the photographs of the sets a model is scored on (erl_derain.data.near_duplicates)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from erl_derain.data import near_duplicates
from erl_derain.data.image_io import images_in_tree, list_images, load_rgb, save_rgb
from tfds_builders.synthetic_rain import synthetic_rain_dataset_builder as srb

from .conftest import shared_data_dir


def _photo(seed: int, size=(48, 64)) -> np.ndarray:
    """A photo-like image: a smooth colour field with blobs, different for each seed."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(6 * xx * rng.uniform(0.5, 2) + rng.uniform(0, 6)),
                    0.5 + 0.4 * np.cos(5 * yy * rng.uniform(0.5, 2) + rng.uniform(0, 6)),
                    np.full_like(xx, rng.uniform(0.1, 0.9))], -1)
    return np.clip(img + 0.03 * rng.random((h, w, 3)), 0, 1).astype(np.float32)


def _tree(root, layout: dict[str, int]):
    """``{sub-folder: photo count}`` of distinct photos; returns {relative path: image}."""
    made, seed = {}, 0
    for sub, n in layout.items():
        for i in range(n):
            rel = f"{sub}/im{seed:03d}.png"
            (root / sub).mkdir(parents=True, exist_ok=True)
            made[rel] = _photo(seed)
            save_rgb(str(root / rel), made[rel])
            seed += 1
    return made


def _names(builder, split):
    return {ex["name"].decode() for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))}


def test_tree_names_are_paths_below_the_folder(tmp_path):
    _tree(tmp_path / "photos", {"bsds/train": 2, "kodak24": 1})
    (tmp_path / "photos" / ".hidden").mkdir()
    save_rgb(str(tmp_path / "photos" / ".hidden" / "x.png"), _photo(9))
    named = images_in_tree(str(tmp_path / "photos"))
    assert sorted(named) == ["bsds-train-im000", "bsds-train-im001", "kodak24-im002"]
    save_rgb(str(tmp_path / "photos" / "bsds-train-im000.jpg"), _photo(8))  # the same name at the top level
    with pytest.raises(ValueError, match="same name 'bsds-train-im000'"):
        images_in_tree(str(tmp_path / "photos"))


def test_natural_holds_out_the_validation_folders_and_renders_as_its_config(tmp_path):
    _tree(tmp_path / "photos", {"bsds500/train": 3, "kodak24": 2, "val20": 1})
    config = srb.custom_config(str(tmp_path / "photos"), base="natural")
    named = srb.Builder.builder_configs["natural"]
    for key in srb.RENDERING:
        assert getattr(config, key) == getattr(named, key), key
    builder = srb.Builder(config=config, data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare()
    train, test = _names(builder, "train"), _names(builder, "test")
    assert {n.split("_")[0] for n in test} == {"kodak24-im003", "kodak24-im004", "val20-im005"}
    assert {n.split("_")[0] for n in train} == {"bsds500-train-im000", "bsds500-train-im001", "bsds500-train-im002"}
    # 6 renderings and 2 rain-free pairs per train photo (whole photos: one tile each), 6 per test photo.
    assert len(train) == 3 * (6 + 2) and len(test) == 3 * 6
    # Without a holdout folder: every 5th photo, as for any other config.
    _tree(tmp_path / "flat", {"a": 5})
    flat = srb.Builder(config=srb.custom_config(str(tmp_path / "flat"), base="natural"), data_dir=str(tmp_path / "t2"))
    flat.download_and_prepare()
    assert {n.split("_")[0] for n in _names(flat, "test")} == {"a-im000"}
    # Each base config and each exclusion list gets its own TFDS directory.
    names = {srb.custom_config(str(tmp_path / "photos")).name, config.name,
             srb.custom_config(str(tmp_path / "photos"), base="natural", exclude_dirs=[str(tmp_path / "flat")]).name}
    assert len(names) == 3
    with pytest.raises(ValueError, match="no config 'nope'"):
        srb.custom_config(str(tmp_path / "photos"), base="nope")


def test_every_photo_in_the_holdout_folders_is_an_error(tmp_path):
    _tree(tmp_path / "photos", {"kodak24": 2})
    builder = srb.Builder(config=srb.custom_config(str(tmp_path / "photos"), base="natural"),
                          data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="others to train on"):
        builder.download_and_prepare()


def test_an_evaluation_sets_photographs_are_left_out(tmp_path, capsys):
    import cv2

    made = _tree(tmp_path / "photos", {"bsds500": 4, "kodak24": 1})
    # The evaluation set holds photo 1 mirrored and re-encoded as JPEG, and an unrelated photo.
    evaluation = tmp_path / "eval_clean"
    evaluation.mkdir()
    mirrored = (made["bsds500/im001.png"][:, ::-1] * 255).round().astype(np.uint8)
    assert cv2.imwrite(str(evaluation / "norain1.jpg"), mirrored[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    save_rgb(str(evaluation / "norain2.png"), _photo(77))
    config = srb.custom_config(str(tmp_path / "photos"), base="natural", exclude_dirs=[str(evaluation)])
    builder = srb.Builder(config=config, data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare()
    sources = {n.split("_")[0] for n in _names(builder, "train") | _names(builder, "test")}
    assert sources == {"bsds500-im000", "bsds500-im002", "bsds500-im003", "kodak24-im004"}
    assert "1 photo(s)" in capsys.readouterr().out


def test_matching_finds_flips_and_reencodings_and_nothing_else():
    a, b = _photo(1, (60, 90)), _photo(2, (60, 90))
    jpeg_like = np.clip(np.round(a * 255 + np.random.default_rng(0).normal(0, 1.5, a.shape)) / 255, 0, 1)
    thumbs = {"a": near_duplicates.thumbnail(a), "b": near_duplicates.thumbnail(b)}
    assert np.abs(thumbs["a"] - thumbs["b"]).mean() > near_duplicates.TOLERANCE
    for variant in (a, a[::-1], a[:, ::-1], jpeg_like, a.transpose(1, 0, 2)):
        t = near_duplicates.thumbnail(variant)
        flips = (t, t[:, ::-1], t[::-1], t[::-1, ::-1])
        assert min(np.abs(f - thumbs["a"]).mean() for f in flips) < near_duplicates.TOLERANCE
        assert min(np.abs(f - thumbs["b"]).mean() for f in flips) > near_duplicates.TOLERANCE


def _pixel_equal_pairs(photos: list[str], against: list[str]) -> set[str]:
    """The photos that equal an image of ``against`` pixel for pixel (to one grey level, in one of the
    eight flips and turns): the exact check that the thumbnail comparison stands in for."""
    images = {p: np.round(load_rgb(p) * 255).astype(np.int16) for p in against}
    found = set()
    for path in photos:
        photo = np.round(load_rgb(path) * 255).astype(np.int16)
        variants = [np.rot90(v, k) for v in (photo, photo[:, ::-1]) for k in range(4)]
        for ref in images.values():
            if any(v.shape == ref.shape and np.abs(v - ref).max() <= 1 for v in variants):
                found.add(path)
                break
    return found


def test_shared_clean_photos_contain_exactly_the_evaluation_photographs_found():
    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is absent")
    photos = list(images_in_tree(str(shared / "clean_photos")).values())
    against = list_images(str(shared / "sirr_val20" / "label_val")) + list_images(str(shared / "jorder_e_small" / "norain"))
    found = set(near_duplicates.matching(photos, against))
    assert found == _pixel_equal_pairs(photos, against)
    assert found  # (the shared BSDS500 photos hold some of these sets' clean images: why the option exists)
