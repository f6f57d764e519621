"""synthetic_rain: the embedded default dataset (no download).

Clean images are the natural photographs that scikit-image installs with itself (or any folder of
clean photos: ``custom_config(clean_dir)``); rain is added by ``erl_derain.data.rain_synthesis`` with
a fixed seed, sampling light to heavy rain (streak density, length, thickness, direction, several
layers and the accumulation veil for the heaviest). The train and test splits come from different
source photographs:

* test: ``chelsea`` and ``coffee`` (full size, 6 renderings each, levels spread evenly light->heavy);
* train: the other colour photos (astronaut, rocket, motorcycle_left/right, hubble_deep_field, ihc,
  retina) and the grey natural photos (camera, brick, grass, gravel, moon, coins; converted to RGB),
  reduced to at most 768 pixels per side and cut into 256x256 tiles, 4 renderings per tile at random
  levels.

Configs: ``default``; ``varied`` (a second scale of the train photos, 8 renderings per tile, the
``streaks`` and ``long`` styles); ``mixed`` (``varied`` plus the ``dense`` style and one rain-free pair
per train tile: the bundled model's training data, ``flags/pretrained/erlnet_synthetic.flags``); ``dense``
(``mixed`` with half the renderings in the dense style); ``wide`` (a third dense, a third in the wide style
of separate wide bright streaks, the rest short and long streaks, each train scene raised to a random power
in [0.6, 1.6] so that it comes lighter and darker: ``clean_gamma``; the bundled model's fine-tuning data,
``flags/pretrained/erlnet_synthetic_finetune.flags``); ``veiled`` (``wide`` with half of
the dense renderings in the veil style, most of the rain in a smooth veil across the image, and twice the
renderings per tile).

``natural``: rain over a folder of natural photographs (``--clean_dir``; on scikit-image's photos
without one): the ``wide`` styles over whole photos (longer side at most 512, as BSDS500's 481x321; no
tiling, the training crops are cut at random), 6 renderings and 2 rain-free pairs per photo (a quarter of
the pairs teach the network to leave rain-free content alone), lighter and darker scenes as ``wide``; the
photos under a sub-folder named ``kodak24`` or ``val20`` are the test split (the validation photos), the
rest train. The bundled models' training data (``flags/pretrained/``), with
``--clean_dir=<shared data>/clean_photos`` and the evaluation sets' clean images excluded
(``--clean_exclude``).

A user folder (``--clean_dir``, at least 2 photos) is read with its sub-folders (an image's name is its
path below the folder, ``/`` written ``-``). The config named with it (``--dataset=synthetic_rain/<config>``,
``default`` without one) gives the rendering; the split is the config's ``holdout_folders`` when the folder
has one of them (``natural``: ``kodak24``, ``val20``), otherwise every 5th photo (sorted by name, at least
one) goes to test and the others to train. ``--clean_exclude`` names folders of images (the clean images of
the sets a model will be scored on) whose photographs must not be rendered in either split: a photo that
shows the same picture (``erl_derain.data.near_duplicates``) is left out, and the list is printed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict

import cv2
import numpy as np
import tensorflow_datasets as tfds

from erl_derain.data.image_io import images_in_tree, list_images, load_rgb
from erl_derain.data.rain_synthesis import STYLES, RainParams, synthesize_rain
from erl_derain.metrics import to_uint8

TEST_SOURCES = ("chelsea", "coffee")
TRAIN_SOURCES = ("astronaut", "rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field", "ihc", "retina",
                 "camera", "brick", "grass", "gravel", "moon", "coins")
SEED = 20190627  # fixed: the dataset is the same on every machine


class SyntheticRainConfig(tfds.core.BuilderConfig):
    def __init__(self, *, clean_dir: str | None = None, train_renders: int = 4, test_renders: int = 6,
                 tile: int = 256, max_side: int = 768, levels: tuple[float, float] = (0.0, 1.0),
                 styles: tuple[str, ...] = ("streaks",), extra_sides: tuple[int, ...] = (), clean_renders: int = 0,
                 clean_gamma: tuple[float, float] = (1.0, 1.0), holdout_folders: tuple[str, ...] = (),
                 exclude_dirs: tuple[str, ...] = (), **kwargs):
        """``styles``: the ``RainParams.sample`` styles drawn from (train: uniformly at random, so a style
        named twice is drawn twice as often; test: in turn).
        ``extra_sides``: further scales of the train photos (their longer side) tiled besides ``max_side``.
        ``clean_renders``: train pairs per tile whose "rainy" image is the clean one (they teach a
        network to leave rain-free content alone; no random draw, so the rainy renderings are unchanged).
        ``clean_gamma``: train only, each pair (rainy and rain-free) raises its clean tile to a power drawn
        log-uniformly from this range before the rain is added, so the same scene comes lighter and
        darker (a network cannot learn a scene's brightness and read the rest as haze). (1, 1): off,
        no draw.
        ``holdout_folders``: with ``clean_dir``, the top-level sub-folders whose photos are the test split
        (when none of them exists: every 5th photo).
        ``exclude_dirs``: with ``clean_dir``, folders of images whose photographs are left out of both
        splits (module docstring)."""
        super().__init__(**kwargs)
        bad = [s for s in styles if s not in STYLES]
        if bad or not styles:
            raise ValueError(f"synthetic_rain: styles must be a non-empty list of {STYLES}, got {styles}")
        self.styles = tuple(styles)
        self.extra_sides = tuple(extra_sides)
        if clean_renders < 0:
            raise ValueError(f"synthetic_rain: clean_renders must be >= 0, got {clean_renders}")
        self.clean_renders = clean_renders
        lo, hi = (float(g) for g in clean_gamma)
        if not 0 < lo <= hi:
            raise ValueError(f"synthetic_rain: clean_gamma must be a range 0 < low <= high, got {clean_gamma}")
        self.clean_gamma = (lo, hi)
        self.clean_dir = clean_dir
        self.holdout_folders = tuple(holdout_folders)
        self.exclude_dirs = tuple(exclude_dirs)
        self.train_renders = train_renders
        self.test_renders = test_renders
        self.tile = tile
        self.max_side = max_side
        self.levels = levels


RENDERING = ("train_renders", "test_renders", "tile", "max_side", "levels", "styles", "extra_sides",
             "clean_renders", "clean_gamma", "holdout_folders")


def custom_config(clean_dir: str, base: str = "default", exclude_dirs=(), **kwargs) -> SyntheticRainConfig:
    """A config for a user's folder of clean photos, rendered as the named config ``base`` (``kwargs``
    override single settings); ``exclude_dirs`` as in :class:`SyntheticRainConfig`. Its name carries a
    hash of the absolute paths (and of ``base`` unless ``default``), so that different folders are
    prepared into different TFDS directories."""
    configs = {c.name: c for c in Builder.BUILDER_CONFIGS}
    if base not in configs:
        raise ValueError(f"synthetic_rain has no config {base!r}; it has {', '.join(configs)}")
    path = os.path.abspath(clean_dir)
    excluded = tuple(sorted(os.path.abspath(d) for d in exclude_dirs))
    key = path if base == "default" and not excluded else "\n".join((base, path) + excluded)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    settings = {k: getattr(configs[base], k) for k in RENDERING}
    settings.update(kwargs)
    name = f"custom_{digest}" if base == "default" else f"{base}_custom_{digest}"
    return SyntheticRainConfig(name=name, clean_dir=path, exclude_dirs=excluded,
                               description=f"rain synthesised as {base!r} on the clean photos of {path}"
                                           + (f", without the photographs of {', '.join(excluded)}" if excluded
                                              else ""), **settings)


def skimage_photo_paths() -> dict[str, str]:
    import skimage

    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    paths = {}
    for name in TEST_SOURCES + TRAIN_SOURCES:
        for ext in (".png", ".jpg"):
            if os.path.exists(os.path.join(data, name + ext)):
                paths[name] = os.path.join(data, name + ext)
    missing = [n for n in TEST_SOURCES + TRAIN_SOURCES if n not in paths]
    if missing:
        raise FileNotFoundError(f"scikit-image's bundled photos {missing} are missing from {data}; "
                                "reinstall scikit-image or build from a folder with --clean_dir")
    return paths


def _shrink(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return img
    return cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def _tiles(img: np.ndarray, tile: int):
    h, w = img.shape[:2]
    if h < tile or w < tile:
        yield 0, img
        return
    k = 0
    for y in range(0, h - tile + 1, tile):
        for x in range(0, w - tile + 1, tile):
            yield k, img[y:y + tile, x:x + tile]
            k += 1


class Builder(tfds.core.GeneratorBasedBuilder):
    """Rain synthesised on clean photos that ship with scikit-image (or a user's folder)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        SyntheticRainConfig(name="default", description="scikit-image's photos, light to heavy rain"),
        SyntheticRainConfig(name="varied", styles=("streaks", "long"), extra_sides=(480,), train_renders=8,
                            description="scikit-image's photos at two scales, 8 renderings per tile, short "
                                        "streaks (with layers and veil) and long Photoshop-style streaks"),
        SyntheticRainConfig(name="mixed", styles=("streaks", "long", "dense"), extra_sides=(480,), train_renders=8, clean_renders=1,
                            description="as varied, plus the dense style (wide faint streaks modulated over the "
                                        "image, and an additive haze) and one rain-free pair per train tile"),
        SyntheticRainConfig(name="dense", styles=("dense", "dense", "streaks", "long"), extra_sides=(480,),
                            train_renders=8, clean_renders=1,
                            description="as mixed, with half the renderings in the dense style"),
        SyntheticRainConfig(name="wide", styles=("dense", "dense", "wide", "wide", "streaks", "long"),
                            extra_sides=(480,), train_renders=8, clean_renders=1, clean_gamma=(0.6, 1.6),
                            description="as dense, with a third of the renderings in the wide style (separate "
                                        "wide bright streaks, drops when heavy) and each train pair's clean tile "
                                        "raised to a random power in [0.6, 1.6] (lighter and darker scenes)"),
        SyntheticRainConfig(name="veiled", styles=("dense", "veil", "wide", "wide", "streaks", "long"),
                            extra_sides=(480,), train_renders=16, clean_renders=2, clean_gamma=(0.6, 1.6),
                            description="as wide, with half of the dense renderings in the veil style (most of "
                                        "the rain in a smooth veil running from nothing to twice its mean), "
                                        "twice the renderings per tile"),
        SyntheticRainConfig(name="natural", styles=("dense", "dense", "wide", "wide", "streaks", "long"),
                            tile=512, max_side=512, train_renders=6, clean_renders=2, clean_gamma=(0.6, 1.6),
                            holdout_folders=("kodak24", "val20"),
                            description="rain over natural photographs (--clean_dir): the wide styles over whole "
                                        "photos (longer side at most 512), 6 renderings and 2 rain-free pairs per "
                                        "photo; the photos under kodak24/ or val20/ are the test split"),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "rainy": tfds.features.Image(shape=(None, None, 3)),
                "clean": tfds.features.Image(shape=(None, None, 3)),
                "name": tfds.features.Text(),
            }),
            supervised_keys=("rainy", "clean"),
            homepage="https://github.com/erl-derain/erl_derain",
        )

    def _sources(self) -> tuple[dict[str, str], dict[str, str]]:
        cfg = self.builder_config
        if cfg.clean_dir:
            named = images_in_tree(cfg.clean_dir)
            if cfg.exclude_dirs:
                from erl_derain.data.near_duplicates import matching

                against = [p for d in cfg.exclude_dirs for p in list_images(d)]
                dropped = matching(named.values(), against)
                if dropped:
                    print(f"synthetic_rain: {len(dropped)} photo(s) of {cfg.clean_dir} left out, the same pictures "
                          f"as images of {', '.join(cfg.exclude_dirs)}: "
                          + ", ".join(f"{p[len(cfg.clean_dir.rstrip(os.path.sep)) + 1:]} ({os.path.basename(q)})"
                                      for p, q in sorted(dropped.items())), flush=True)
                named = {n: p for n, p in named.items() if p not in dropped}
            if len(named) < 2:
                raise ValueError(f"{cfg.clean_dir}: synthetic_rain needs at least 2 clean photos (train and test "
                                 f"come from different photos), found {len(named)}")
            names = sorted(named)
            root = cfg.clean_dir.rstrip(os.path.sep) + os.path.sep  # (the paths of images_in_tree start with it)
            top = {n: named[n][len(root):].split(os.path.sep)[0] if named[n].startswith(root) else "" for n in names}
            held = set(cfg.holdout_folders) & set(top.values())
            test = {n for n in names if top[n] in held} if held else set(names[::5])
            if len(test) == len(names):
                raise ValueError(f"{cfg.clean_dir}: every photo is under {sorted(held)} (the test split); "
                                 "synthetic_rain needs others to train on")
            return ({n: named[n] for n in names if n not in test}, {n: named[n] for n in names if n in test})
        paths = skimage_photo_paths()
        return {n: paths[n] for n in TRAIN_SOURCES}, {n: paths[n] for n in TEST_SOURCES}

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        train, test = self._sources()
        return {"train": self._generate_examples(train, "train"), "test": self._generate_examples(test, "test")}

    def _generate_examples(self, sources: dict[str, str], split: str):
        cfg = self.builder_config
        lo, hi = cfg.levels
        for index, (name, path) in enumerate(sorted(sources.items())):
            # One generator per source photo, so that examples do not depend on the order of others.
            rng = np.random.default_rng([SEED, index, 0 if split == "train" else 1])
            clean = load_rgb(path)
            if split == "train":
                pieces = [(f"{side}_{t}" if side != cfg.max_side else t, tile)
                          for side in (cfg.max_side,) + cfg.extra_sides
                          for t, tile in _tiles(_shrink(clean, side), cfg.tile)]
                renders = cfg.train_renders
            else:
                pieces = [(0, clean)]
                renders = cfg.test_renders
            jitter = split == "train" and cfg.clean_gamma != (1.0, 1.0)

            def jittered(piece):
                if not jitter:
                    return piece
                gamma = np.exp(rng.uniform(*np.log(cfg.clean_gamma)))
                return np.power(np.clip(piece, 0.0, 1.0), gamma).astype(np.float32)

            for t, piece in pieces:
                tid = f"{t:02d}" if isinstance(t, int) else t
                clean_u8 = to_uint8(piece)
                for r in range(renders):
                    scene = jittered(piece)
                    if split == "train":
                        level = rng.uniform(lo, hi)
                    else:  # evenly spread, light to heavy
                        level = lo + (hi - lo) * r / max(1, renders - 1)
                    if len(cfg.styles) == 1:  # (no draw: the default config's stream of numbers is unchanged)
                        style = cfg.styles[0]
                    else:
                        style = cfg.styles[rng.integers(len(cfg.styles))] if split == "train" else \
                            cfg.styles[r % len(cfg.styles)]
                    params = RainParams.sample(rng, level, style)
                    rainy, _ = synthesize_rain(scene, rng=rng, **asdict(params))
                    key = f"{name}_t{tid}_r{r:02d}" if split == "train" else f"{name}_r{r:02d}"
                    yield key, {"rainy": to_uint8(rainy), "clean": to_uint8(scene) if jitter else clean_u8,
                                "name": key}
                if split == "train":
                    for c in range(cfg.clean_renders):
                        key = f"{name}_t{tid}_c{c:02d}"
                        same = to_uint8(jittered(piece)) if jitter else clean_u8
                        yield key, {"rainy": same, "clean": same, "name": key}
