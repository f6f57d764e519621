"""synthetic_rain: TFDS conformance (tfds.testing.DatasetBuilderTestCase) and the builder's guarantees.

The builder downloads nothing, so instead of a checked-in ``dummy_data/`` folder the conformance test
writes a few tiny clean photos into a temporary folder and builds a ``custom_config`` on them (the
same code path as the scikit-image default, minus the photo list). The full default build is tested
in ``tfds_builders/synthetic_rain/synthetic_rain_dataset_builder_test.py``.
"""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from erl_derain.data.image_io import load_rgb, save_rgb
from tfds_builders.synthetic_rain import synthetic_rain_dataset_builder as srb


def _write_photos(folder, n: int = 5, size=(64, 80)) -> None:
    """Smooth colour gradients with a little texture: stand-ins for clean photos."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.stack([0.2 + 0.5 * xx, 0.3 + 0.4 * yy, np.full_like(xx, 0.1 * i + 0.2)], -1)
        img[: h // 3, : w // 3] *= 0.2  # a dark corner
        save_rgb(f"{folder}/p{i}.png", np.clip(img + 0.05 * rng.random((h, w, 3)), 0, 1))


def _source(name: str) -> str:
    return name.split("_t")[0] if "_t" in name else name.rsplit("_r", 1)[0]


try:  # tfds.testing imports dill, which TFDS does not install (the "test" extra of setup.py should)
    import dill  # noqa: F401
except ImportError:
    dill = None

if dill is None:

    def test_conformance_needs_dill():
        pytest.skip("tfds.testing.DatasetBuilderTestCase needs `pip install dill`")

else:

    class SyntheticRainConformanceTest(tfds.testing.DatasetBuilderTestCase):
        """Registered, info, build, as_dataset, split sizes, reload, and no example shared by two splits."""

        DATASET_CLASS = srb.Builder
        # 5 photos: every 5th by name (p0) is the test photo, p1..p4 train; photos smaller than a tile are
        # kept whole: 4 photos x 2 renders and 1 photo x 3 renders.
        SPLITS = {"train": 8, "test": 3}
        SKIP_CHECKSUMS = True  # nothing is downloaded

        @classmethod
        def setUpClass(cls):
            cls._photos = tempfile.mkdtemp(prefix="synthetic_rain_photos_")
            _write_photos(cls._photos)
            cls.EXAMPLE_DIR = cls._photos
            cls.BUILDER_CONFIG_NAMES_TO_TEST = [srb.custom_config(cls._photos, train_renders=2, test_renders=3)]
            super().setUpClass()

        @classmethod
        def tearDownClass(cls):
            super().tearDownClass()
            shutil.rmtree(cls._photos, ignore_errors=True)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _write_photos(folder, size=(160, 200))  # big enough for light rain to start a few streaks
    return folder


def _build(config, data_dir):
    builder = srb.Builder(config=config, data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder


def test_light_rain_is_additive_and_heavy_rain_veils(photos, tmp_path):
    """Light/medium levels (no veil): rainy >= clean everywhere. Heavy levels add the accumulation veil
    O = alpha (B + S) + (1 - alpha) A, which darkens pixels brighter than A and lifts the dark ones."""
    light = _build(srb.custom_config(str(photos), train_renders=2, test_renders=2, levels=(0.0, 0.4)),
                   tmp_path / "light")
    for ex in tfds.as_numpy(light.as_dataset(split="train")):
        rainy, clean = ex["rainy"].astype(int), ex["clean"].astype(int)
        assert (rainy >= clean).all()
        assert (rainy > clean).mean() > 0.005  # some rain was added
    heavy = _build(srb.custom_config(str(photos), train_renders=2, test_renders=2, levels=(0.9, 1.0)),
                   tmp_path / "heavy")
    for ex in tfds.as_numpy(heavy.as_dataset(split="train")):
        rainy, clean = ex["rainy"].astype(float) / 255, ex["clean"].astype(float) / 255
        assert np.abs(rainy - clean).mean() > 0.05
        # the veil lifts the darkest clean pixels (every one of them, even without a streak)
        dark = clean < 0.15
        assert dark.any()
        assert (rainy[dark] > clean[dark]).all()


def test_custom_folder_needs_two_distinct_photos(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    save_rgb(str(one / "a.png"), np.full((32, 32, 3), 0.5))
    with pytest.raises(ValueError, match="at least 2"):
        _build(srb.custom_config(str(one)), tmp_path / "tfds1")
    save_rgb(str(one / "a.jpg"), np.full((32, 32, 3), 0.5))  # same stem as a.png
    with pytest.raises(ValueError, match="same name .a."):
        _build(srb.custom_config(str(one)), tmp_path / "tfds2")


def test_custom_config_names_differ_per_folder(tmp_path):
    a = srb.custom_config(str(tmp_path / "a"))
    b = srb.custom_config(str(tmp_path / "b"))
    assert a.name != b.name and a.name.startswith("custom_") and b.name.startswith("custom_")
    assert srb.custom_config(str(tmp_path / "a")).name == a.name  # stable for the same folder


def test_default_sources_are_disjoint_and_big_enough():
    """Without building: the default's photos exist, the splits share no photo (the stereo pair
    motorcycle_left/right shows one scene, so both must be on the same side), and every example
    (test photos whole, train photos shrunk and tiled) is at least 128x128."""
    assert not set(srb.TRAIN_SOURCES) & set(srb.TEST_SOURCES)
    assert ("motorcycle_left" in srb.TRAIN_SOURCES) == ("motorcycle_right" in srb.TRAIN_SOURCES)
    paths = srb.skimage_photo_paths()
    cfg = srb.Builder.BUILDER_CONFIGS[0]
    for name in srb.TEST_SOURCES:
        assert min(load_rgb(paths[name]).shape[:2]) >= 128
    for name in srb.TRAIN_SOURCES:
        pieces = list(srb._tiles(srb._shrink(load_rgb(paths[name]), cfg.max_side), cfg.tile))
        assert pieces and all(min(p.shape[:2]) >= 128 for _, p in pieces)


def test_varied_config_adds_scales_and_the_long_style(photos, tmp_path):
    """``styles`` and ``extra_sides`` (the ``varied`` config of the bundled model): the test split takes
    the styles in turn (renders 0, 2, 4 short streaks, 1, 3, 5 long ones); long streaks are purely
    additive; a second scale of the train photos adds tiles."""
    base = _build(srb.custom_config(str(photos), train_renders=1, test_renders=6), tmp_path / "base")
    cfg = srb.custom_config(str(photos), train_renders=1, test_renders=6, styles=("streaks", "long"),
                            extra_sides=(100,))
    varied = _build(cfg, tmp_path / "varied")
    # The 160x200 train photos are smaller than a 256 tile, so each is kept whole at max_side 768 and
    # again shrunk to 80x100 at side 100: twice the examples.
    assert varied.info.splits["train"].num_examples == 2 * base.info.splits["train"].num_examples
    names = {ex["name"].decode() for ex in tfds.as_numpy(varied.as_dataset(split="train"))}
    assert any("_t100_" in n for n in names)
    test = {ex["name"].decode(): ex for ex in tfds.as_numpy(varied.as_dataset(split="test"))}
    for r in (1, 3, 5):  # long style: never darker than the clean photo
        ex = next(v for k, v in test.items() if k.endswith(f"_r{r:02d}"))
        assert (ex["rainy"].astype(int) >= ex["clean"].astype(int)).all()
    with pytest.raises(ValueError, match="styles"):
        srb.custom_config(str(photos), styles=("drizzle",))


def test_a_style_named_twice_is_drawn_twice_as_often(photos, tmp_path):
    """The ``dense`` config names the dense style twice: the test split takes the four names in turn,
    so renders 0 and 1 are dense ones, exactly those of a dense-only config (the same generator state
    and level), and render 2 is the short-streak style, which differs."""
    kw = dict(train_renders=1, test_renders=4, levels=(0.3, 0.9))
    only = _build(srb.custom_config(str(photos), styles=("dense",), **kw), tmp_path / "only")
    twice = _build(srb.custom_config(str(photos), styles=("dense", "dense", "streaks", "long"), **kw),
                   tmp_path / "twice")
    a = {ex["name"].decode(): ex["rainy"] for ex in tfds.as_numpy(only.as_dataset(split="test"))}
    b = {ex["name"].decode(): ex["rainy"] for ex in tfds.as_numpy(twice.as_dataset(split="test"))}
    for name in a:
        if name.endswith(("_r00", "_r01")):
            np.testing.assert_array_equal(a[name], b[name])
        elif name.endswith("_r02"):
            assert not np.array_equal(a[name], b[name])
    assert [c.name for c in srb.Builder.BUILDER_CONFIGS if c.styles.count("dense") == 2] == ["dense", "wide", "natural"]


def test_clean_renders_add_rain_free_pairs_and_keep_the_rainy_ones(photos, tmp_path):
    """``clean_renders`` (the ``mixed`` config): one pair per train tile whose rainy image is the clean
    one; the rainy renderings are those of the config without it (no random number is drawn)."""
    base = _build(srb.custom_config(str(photos), train_renders=2, styles=srb.STYLES), tmp_path / "base")
    cfg = srb.custom_config(str(photos), train_renders=2, styles=srb.STYLES, clean_renders=1)
    mixed = _build(cfg, tmp_path / "mixed")
    before = {ex["name"].decode(): ex for ex in tfds.as_numpy(base.as_dataset(split="train"))}
    after = {ex["name"].decode(): ex for ex in tfds.as_numpy(mixed.as_dataset(split="train"))}
    rain_free = {k for k in after if "_c00" in k}
    assert len(rain_free) == len(before) // 2 and set(after) - rain_free == set(before)
    for k in rain_free:
        np.testing.assert_array_equal(after[k]["rainy"], after[k]["clean"])
    for k, ex in before.items():
        np.testing.assert_array_equal(after[k]["rainy"], ex["rainy"])
    assert mixed.info.splits["test"].num_examples == base.info.splits["test"].num_examples
    with pytest.raises(ValueError, match="clean_renders"):
        srb.custom_config(str(photos), clean_renders=-1)


def test_clean_gamma_shows_each_train_scene_lighter_and_darker(photos, tmp_path):
    """``clean_gamma`` (the ``wide`` config): each train pair's clean image is the photo tile raised to one
    power in the range (fitted here from the pixels), the rain is added on top of it (additive styles: the
    rainy image is never darker), rain-free pairs carry the same jittered scene on both sides, and the test
    split is that of the config without it."""
    kw = dict(train_renders=3, styles=("wide", "long", "dense"), clean_renders=1)
    base = _build(srb.custom_config(str(photos), **kw), tmp_path / "base")
    jit = _build(srb.custom_config(str(photos), clean_gamma=(0.6, 1.6), **kw), tmp_path / "jit")
    before = {ex["name"].decode(): ex for ex in tfds.as_numpy(base.as_dataset(split="train"))}
    after = {ex["name"].decode(): ex for ex in tfds.as_numpy(jit.as_dataset(split="train"))}
    assert set(before) == set(after)
    gammas = []
    for name, ex in after.items():
        photo = before[name]["clean"].astype(np.float64) / 255  # the tile itself (no jitter there)
        mid = (photo > 0.15) & (photo < 0.85)
        g = np.median(np.log(np.maximum(ex["clean"][mid] / 255, 1e-3)) / np.log(photo[mid]))
        assert 0.55 <= g <= 1.7
        np.testing.assert_allclose(ex["clean"] / 255, photo ** g, atol=3 / 255)
        gammas.append(g)
        if "_c00" in name:
            np.testing.assert_array_equal(ex["rainy"], ex["clean"])
        else:
            assert (ex["rainy"].astype(int) >= ex["clean"].astype(int) - 1).all()
    assert min(gammas) < 0.9 and max(gammas) > 1.15  # lighter and darker versions both occur
    test_a = [ex["rainy"] for ex in tfds.as_numpy(base.as_dataset(split="test"))]
    test_b = [ex["rainy"] for ex in tfds.as_numpy(jit.as_dataset(split="test"))]
    for a, b in zip(test_a, test_b, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="clean_gamma"):
        srb.custom_config(str(photos), clean_gamma=(1.5, 0.8))
