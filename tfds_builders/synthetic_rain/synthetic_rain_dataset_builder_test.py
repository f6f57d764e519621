"""synthetic_rain: built through the TFDS Python API into a temporary data_dir (no download)."""

import hashlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from erl_derain.data.image_io import save_rgb
from tfds_builders.synthetic_rain import synthetic_rain_dataset_builder as srb


def _source(name: str) -> str:
    return name.split("_t")[0] if "_t" in name else name.rsplit("_r", 1)[0]


def _examples(builder, split):
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


@pytest.fixture(scope="module")
def default_builder(tmp_path_factory):
    builder = tfds.builder("synthetic_rain", data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare()
    return builder


def test_default_splits_come_from_different_photos(default_builder):
    info = default_builder.info
    assert info.splits["train"].num_examples == 200 and info.splits["test"].num_examples == 12
    train = _examples(default_builder, "train")
    test = _examples(default_builder, "test")
    train_sources = {_source(ex["name"].decode()) for ex in train}
    test_sources = {_source(ex["name"].decode()) for ex in test}
    assert test_sources == set(srb.TEST_SOURCES)
    assert train_sources == set(srb.TRAIN_SOURCES)
    assert not train_sources & test_sources
    # Clean images of the two splits share no pixels' worth of content: no identical clean image.
    train_hashes = {hashlib.sha1(ex["clean"].tobytes()).hexdigest() for ex in train}
    assert not {hashlib.sha1(ex["clean"].tobytes()).hexdigest() for ex in test} & train_hashes
    for ex in train[:20] + test:
        assert ex["rainy"].dtype == np.uint8 and ex["rainy"].shape == ex["clean"].shape and ex["rainy"].shape[-1] == 3
        assert not np.array_equal(ex["rainy"], ex["clean"])
    assert all(ex["clean"].shape[:2] == (256, 256) for ex in train)


def test_test_split_goes_from_light_to_heavy(default_builder):
    from erl_derain import metrics

    test = sorted(_examples(default_builder, "test"), key=lambda ex: ex["name"])
    for source in srb.TEST_SOURCES:
        psnrs = [metrics.psnr_y(ex["rainy"], ex["clean"]) for ex in test if ex["name"].decode().startswith(source)]
        assert len(psnrs) == 6
        assert psnrs[0] > 25 and psnrs[-1] < 18  # light rain first, heavy rain last
        assert psnrs[0] > psnrs[-1] + 10


def _photos(folder, n=6):
    rng = np.random.default_rng(0)
    for i in range(n):
        save_rgb(str(folder / f"p{i}.png"), rng.random((40 + 4 * i, 48, 3)))
    return folder


def test_custom_folder_is_deterministic_and_split_by_photo(tmp_path):
    photos = _photos(tmp_path / "photos")
    photos_dir = str(photos)
    config = srb.custom_config(photos_dir, train_renders=2, test_renders=2)
    outs = []
    for run in range(2):
        builder = srb.Builder(config=config, data_dir=str(tmp_path / f"tfds{run}"))
        builder.download_and_prepare()
        outs.append({split: _examples(builder, split) for split in ("train", "test")})
    for split in ("train", "test"):
        a = sorted(outs[0][split], key=lambda ex: ex["name"])
        b = sorted(outs[1][split], key=lambda ex: ex["name"])
        assert [ex["name"] for ex in a] == [ex["name"] for ex in b]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x["rainy"], y["rainy"])
    test_sources = {_source(ex["name"].decode()) for ex in outs[0]["test"]}
    train_sources = {_source(ex["name"].decode()) for ex in outs[0]["train"]}
    assert test_sources == {"p0", "p5"} and train_sources == {"p1", "p2", "p3", "p4"}
    # Another folder gets another config name, so the two never share a TFDS directory.
    assert srb.custom_config(str(tmp_path)).name != config.name


def test_custom_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    builder = srb.Builder(config=srb.custom_config(str(empty)), data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="no images"):
        builder.download_and_prepare()
