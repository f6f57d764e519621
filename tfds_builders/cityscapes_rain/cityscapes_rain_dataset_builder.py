"""cityscapes_rain: rain synthesised on Cityscapes with the recipe of Xu et al. ("Intensity-Aware
Single-Image Deraining with Semantic and Color Regularization", IEEE TIP 2021, Sec. III.D), with the
19-class semantic labels, read from a manual_dir.

The manual_dir holds the two Cityscapes archives ``leftImg8bit_trainvaltest.zip`` and
``gtFine_trainvaltest.zip`` unpacked (``leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
and ``gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``). Splits: ``train`` (2975
images) and ``val`` (500, the paper's test set); Cityscapes' ``test`` split has no public labels and
is not built.

Each clean image is (by default) reduced to 1024 pixels on its long side (2048x1024 -> 1024x512,
``INTER_AREA``; the ``full`` config keeps 2048x1024), and rain is added by
``erl_derain.data.rain_synthesis`` as in the paper: one streak layer from Gaussian-blurred random
noise, blur radius from {0.2, 0.4, 0.6, 0.8, 1.0}, motion blur along one of 7 directions
{0, +-15, +-30, +-40} degrees from vertical, rainy = clip(clean + rain). Density, length and
intensity come from ``RainParams.sample`` at a level drawn uniformly from the config's ``levels``.
The generator of each rendering is seeded from a fixed seed, the CRC32 of the Cityscapes stem and the
rendering index, so a dataset is the same on every machine, independent of which other images are
present, and the direction / radius / streak pattern of an image are the same in every config (only
the resolution differs).

Features: ``rainy``, ``clean`` (uint8 RGB), ``name`` (the Cityscapes stem, e.g.
``frankfurt_000000_000294``; ``<stem>_r<k>`` when a config renders k > 1 times), ``segmentation``
(uint8 HxWx1 Cityscapes trainIds 0..18, 255 = ignore; resized with nearest neighbour),
``rain_direction`` (int32 degrees from vertical, positive = top of the streak leans right) and
``rain_radius`` (float32 Gaussian radius). See README.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib
from pathlib import Path

import cv2
import numpy as np
import tensorflow_datasets as tfds

from erl_derain.data.rain_synthesis import BLUR_SIGMAS, DIRECTIONS, RainParams, synthesize_rain
from erl_derain.metrics import to_uint8
from tfds_builders import paired_common as pc

SEED = 20210929  # fixed: the dataset is the same on every machine
SPLITS = ("train", "val")
IMAGE_SUFFIX = "_leftImg8bit"
LABEL_SUFFIX = "_gtFine_labelIds.png"
IGNORE = 255

# Cityscapes' official labelId -> trainId table (cityscapesscripts/helpers/labels.py); every other
# labelId (unlabeled, ego vehicle, ..., ground, parking, rail track, guard rail, bridge, tunnel,
# polegroup, caravan, trailer, license plate) is ignored (255).
TRAIN_IDS = {
    7: 0,    # road
    8: 1,    # sidewalk
    11: 2,   # building
    12: 3,   # wall
    13: 4,   # fence
    17: 5,   # pole
    19: 6,   # traffic light
    20: 7,   # traffic sign
    21: 8,   # vegetation
    22: 9,   # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
CLASS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle")
NUM_CLASSES = len(CLASS_NAMES)

_LUT = np.full(256, IGNORE, np.uint8)
for _label_id, _train_id in TRAIN_IDS.items():
    _LUT[_label_id] = _train_id

# Table IV's ablations of the paper: streak sizes by blur radius.
SIZE_OF_RADIUS = {0.2: "small", 0.4: "medium", 0.6: "medium", 0.8: "large", 1.0: "large"}
RAIN_SIZES = ("small", "medium", "large")
RADIUS_FEATURE = "rain_radius"


def radii_of_sizes(sizes) -> tuple[float, ...]:
    """The blur radii of the named streak sizes, as the paper defines them (Section IV.C, "Network
    design study": "a filter radius of 0.2 as small size, filter radii of 0.4 and 0.6 as medium size,
    and the rest are of large size"): small -> (0.2,), medium -> (0.4, 0.6), large -> (0.8, 1.0).
    An unknown size, or all three (nothing left to train on), raises ValueError naming
    ``--exclude_rain_sizes``."""
    sizes = [str(s).strip().lower() for s in sizes if str(s).strip()]
    unknown = [s for s in sizes if s not in RAIN_SIZES]
    if unknown:
        raise ValueError(f"--exclude_rain_sizes: unknown size(s) {', '.join(map(repr, unknown))}; expected a "
                         f"comma-separated subset of {','.join(RAIN_SIZES)} (radius 0.2 = small, 0.4 and 0.6 = "
                         f"medium, 0.8 and 1.0 = large)")
    if set(sizes) == set(RAIN_SIZES):
        raise ValueError(f"--exclude_rain_sizes={','.join(sizes)} leaves out every training example: give at most "
                         f"two of {','.join(RAIN_SIZES)}")
    return tuple(r for r, size in SIZE_OF_RADIUS.items() if size in sizes)


def exclude_rain_sizes(sizes, features=None, *, dataset: str = "cityscapes_rain") -> dict:
    """``--exclude_rain_sizes`` as the ``exclude`` of ``erl_derain.data.pipelines.paired_dataset``:
    ``{'rain_radius': radii}`` (Table IV "w/o. S", "w/o. M", "w/o. L"). ``features``: the feature
    names of the training dataset (None: not checked; an empty list: a folder, which has none); one
    without ``rain_radius`` raises ValueError naming the flag and ``dataset``."""
    radii = radii_of_sizes(sizes)
    if features is not None and RADIUS_FEATURE not in features:
        have = f"its features: {', '.join(sorted(features))}" if features else "a folder of pairs has no features"
        raise ValueError(f"--exclude_rain_sizes={','.join(sizes)} leaves out training examples by their "
                         f"'{RADIUS_FEATURE}' feature, which --dataset={dataset} does not have ({have}); use "
                         f"--dataset=cityscapes_rain (or another TFDS dataset that records '{RADIUS_FEATURE}')")
    return {RADIUS_FEATURE: radii}


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds (uint8, any shape) -> trainIds 0..18, 255 for everything not trained on."""
    label_ids = np.asarray(label_ids)
    if label_ids.dtype != np.uint8:
        raise TypeError(f"labelIds must be uint8, got {label_ids.dtype}")
    return _LUT[label_ids]


def downscale(image: np.ndarray, max_side: int | None, interpolation: int) -> np.ndarray:
    """``image`` reduced so that its long side is at most ``max_side`` pixels (aspect kept, each side
    rounded, at least 1); unchanged when it is already small enough or ``max_side`` is None."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = cv2.resize(image, size, interpolation=interpolation)
    return out.reshape(out.shape[:2] + image.shape[2:])  # cv2 drops a trailing channel of 1


def read_label_ids(path: Path) -> np.ndarray:
    """A ``*_gtFine_labelIds.png`` as uint8 HxW; unreadable or not a single-channel 8-bit map ->
    `ImagePairError` naming the file."""
    try:
        data = np.fromfile(os.fspath(path), np.uint8)
    except OSError as err:
        raise pc.ImagePairError(f"{path}: cannot read the label map ({err})") from err
    label = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if label is None:
        raise pc.ImagePairError(f"{path}: not a readable image")
    if label.ndim == 3:  # an RGB copy of a grey map: all channels equal
        if not all(np.array_equal(label[..., 0], label[..., c]) for c in range(1, label.shape[-1])):
            raise pc.ImagePairError(f"{path}: a labelIds map must have one channel (this one has "
                                    f"{label.shape[-1]} different channels; is it a *_gtFine_color.png?)")
        label = label[..., 0]
    if label.dtype != np.uint8:
        if label.max() > 255:
            raise pc.ImagePairError(f"{path}: labelIds above 255 ({label.max()}); not a Cityscapes labelIds map")
        label = label.astype(np.uint8)
    return label


def rain_settings(stem: str, render: int,
                  levels: tuple[float, float] = (0.0, 1.0)) -> tuple[np.random.Generator, RainParams]:
    """The generator and rain parameters of rendering ``render`` of image ``stem``: direction and
    radius drawn uniformly from the paper's sets, density / length / intensity from
    ``RainParams.sample`` at a level uniform in ``levels``; one layer, no accumulation veil (the
    paper's additive model). The returned generator then draws the streak pattern."""
    rng = np.random.default_rng([SEED, zlib.crc32(stem.encode("utf-8")), render])
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    radius = BLUR_SIGMAS[int(rng.integers(len(BLUR_SIGMAS)))]
    level = float(rng.uniform(*levels))
    params = dataclasses.replace(RainParams.sample(rng, level), angle=float(direction), blur_sigma=float(radius),
                                 layers=1, accumulation=False)
    return rng, params


INSTRUCTIONS = f"""\
cityscapes_rain: rain synthesised on Cityscapes (Cordts et al., CVPR 2016) with the recipe of Xu et al.
("Intensity-Aware Single-Image Deraining with Semantic and Color Regularization", IEEE TIP 2021):
train split = Cityscapes train (2975 images), val split = Cityscapes val (500 images, the paper's
test set), with the fine labels mapped to the 19 training classes.
Register at https://www.cityscapes-dataset.com/ and download (Downloads page) the two archives
  leftImg8bit_trainvaltest.zip   (11 GB; the images)
  gtFine_trainvaltest.zip        (241 MB; the fine annotations)
Unzip both into the manual_dir, so that it holds
  <manual_dir>/
    leftImg8bit/train/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    leftImg8bit/val/<city>/...
    gtFine/train/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   (the other gtFine files are ignored)
    gtFine/val/<city>/...
The leftImg8bit/ and gtFine/ folders may also sit one level down (e.g. each archive unzipped into its
own folder: <manual_dir>/leftImg8bit_trainvaltest/leftImg8bit/, <manual_dir>/gtFine_trainvaltest/gtFine/).
Every leftImg8bit image of train/val needs its *_gtFine_labelIds.png. The test split (no public
labels) is not used. A split is built only if its leftImg8bit folder is found.
""" + pc.HOW_TO_BUILD.format(name="cityscapes_rain")


class CityscapesRainConfig(tfds.core.BuilderConfig):
    """``max_side``: long side of the stored images in pixels (None: Cityscapes' full 2048x1024);
    ``renders``: rain renderings per image; ``levels``: range of the rain level (density, length,
    intensity) sampled per rendering, 0 = light, 1 = heavy."""

    def __init__(self, *, max_side: int | None = 1024, renders: int = 1, levels: tuple[float, float] = (0.0, 1.0),
                 **kwargs):
        super().__init__(**kwargs)
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be a positive number of pixels or None, got {max_side}")
        if renders < 1:
            raise ValueError(f"renders must be >= 1, got {renders}")
        if not 0.0 <= levels[0] <= levels[1] <= 1.0:
            raise ValueError(f"levels must be (lo, hi) with 0 <= lo <= hi <= 1, got {levels}")
        self.max_side = max_side
        self.renders = renders
        self.levels = tuple(levels)


@dataclasses.dataclass(frozen=True)
class CityscapesSource:
    """One example to be: the Cityscapes image, its labelIds map and the rendering index."""

    name: str    # the example's name (also its key)
    stem: str    # <city>_<seq>_<frame>
    image: Path
    label: Path
    render: int = 0


class Builder(pc.ManualBuilder):
    """Cityscapes with synthesised rain (Xu et al., TIP 2021) and 19-class segmentation labels."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://www.cityscapes-dataset.com/"
    NOT_FOUND = "no leftImg8bit/ folder with train/ or val/ (from leftImg8bit_trainvaltest.zip)"
    EXPECTED_COUNTS = {"train": (2975,), "val": (500,)}
    BUILDER_CONFIGS = [
        CityscapesRainConfig(name="default", max_side=1024,
                             description="images reduced to 1024 pixels on the long side (1024x512), 1 rendering"),
        CityscapesRainConfig(name="full", max_side=None,
                             description="full-size images (2048x1024), 1 rendering"),
    ]

    def _features(self) -> dict:
        return pc.paired_features(
            segmentation=tfds.features.Image(
                shape=(None, None, 1), dtype=np.uint8,
                doc="Cityscapes trainIds 0..18 (road ... bicycle), 255 = ignore"),
            rain_direction=tfds.features.Scalar(
                dtype=np.int32, doc="streak direction, degrees from vertical: 0, +-15, +-30, +-40"),
            rain_radius=tfds.features.Scalar(
                dtype=np.float32, doc="Gaussian blur radius of the streaks: 0.2, 0.4, 0.6, 0.8 or 1.0"),
        )

    # ---------------------------------------------------------------------------------------------
    # Finding the files

    def _find_roots(self, root: Path) -> tuple[Path, Path] | None:
        """(leftImg8bit, gtFine) folders: the shallowest leftImg8bit/ below the manual_dir, and the
        gtFine/ next to it (else the shallowest one anywhere)."""
        folders = [f for f in pc.walk_folders(root) if f.depth >= 1]

        def shallowest(name: str, exclude: Path | None = None) -> pc.Folder | None:
            hits = [f for f in folders if pc.norm_name(f.name) == pc.norm_name(name)
                    and not (exclude is not None and exclude in f.path.parents)]
            if not hits:
                return None
            best = min(f.depth for f in hits)
            top = [f for f in hits if f.depth == best]
            if len(top) > 1:
                listed = "\n  ".join(f.shown() for f in top)
                raise pc.ManualDataError(f"several {name}/ folders in manual_dir {root}:\n  {listed}\n"
                                         f"point manual_dir at the folder holding the one to use")
            return top[0]

        images = shallowest("leftImg8bit")
        if images is None:
            return None
        labels = pc.child_dir(images.path.parent, "gtFine")
        if labels is None:
            found = shallowest("gtFine", exclude=images.path)
            labels = found.path if found else None
        if labels is None:
            raise pc.ManualDataError(
                f"found the images ({images.shown()}) but no gtFine/ folder next to them or elsewhere in manual_dir "
                f"{root}; unzip gtFine_trainvaltest.zip there too.\n\n{INSTRUCTIONS}")
        return images.path, labels

    def _find_splits(self, root: Path):
        notes: list[str] = []
        roots = self._find_roots(root)
        if roots is None:
            return {}, notes
        images_root, labels_root = roots
        cfg = self.builder_config
        out: dict[str, list[CityscapesSource]] = {}
        for split in SPLITS:
            split_dir = pc.child_dir(images_root, split)
            if split_dir is None:
                notes.append(f"{images_root} has no {split}/ folder")
                continue
            pairs = self._split_pairs(split, split_dir, labels_root)
            if not pairs:
                notes.append(f"{split_dir} holds no <city>/*{IMAGE_SUFFIX}.png images")
                continue
            out[split] = [CityscapesSource(name=stem if cfg.renders == 1 else f"{stem}_r{k}", stem=stem,
                                           image=image, label=label, render=k)
                          for stem, image, label in pairs for k in range(cfg.renders)]
        return out, notes

    @staticmethod
    def _split_pairs(split: str, split_dir: Path, labels_root: Path) -> list[tuple[str, Path, Path]]:
        """(stem, image, label) of every ``<city>/<stem>_leftImg8bit.png`` of ``split_dir``, sorted by stem;
        an image without its ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` raises `ImagePairError`."""
        pattern = re.compile(rf"(.+){IMAGE_SUFFIX}", re.I)
        found: dict[str, tuple[Path, Path]] = {}
        missing: list[tuple[Path, Path]] = []
        label_split = pc.child_dir(labels_root, split)
        for city in sorted((f for f in pc.walk_folders(split_dir, max_depth=1) if f.depth == 1),
                           key=lambda f: f.name):
            label_city = pc.child_dir(label_split, city.name) if label_split is not None else None
            for image in pc.image_files(city.path):
                m = pattern.fullmatch(image.stem)
                if not m or image.suffix.lower() != ".png":
                    continue
                stem = m.group(1)
                if stem in found:
                    raise pc.ImagePairError(f"{found[stem][0]} and {image} are both Cityscapes image {stem}; keep one")
                expected = (label_city or labels_root / split / city.name) / f"{stem}{LABEL_SUFFIX}"
                if not expected.is_file():
                    missing.append((image, expected))
                found[stem] = (image, expected)
        if missing:
            image, expected = missing[0]
            more = f" (and {len(missing) - 1} more {split} images have no label)" if len(missing) > 1 else ""
            raise pc.ImagePairError(f"Cityscapes image {image} has no label file: no {expected}{more}. Unzip "
                                    f"gtFine_trainvaltest.zip next to leftImg8bit/ (its gtFine/{split}/<city>/ "
                                    f"folders hold the *{LABEL_SUFFIX} maps)")
        return [(stem, *found[stem]) for stem in sorted(found)]

    # ---------------------------------------------------------------------------------------------
    # One example

    def _example(self, source: CityscapesSource) -> dict:
        cfg = self.builder_config
        clean = pc.read_rgb(source.image)
        label_ids = read_label_ids(source.label)
        pc.check_same_size(image=(clean, source.image), label=(label_ids, source.label))
        clean = downscale(clean, cfg.max_side, cv2.INTER_AREA)
        segmentation = downscale(to_train_ids(label_ids), cfg.max_side, cv2.INTER_NEAREST)[..., None]
        rng, params = rain_settings(source.stem, source.render, cfg.levels)
        rainy, _ = synthesize_rain(clean.astype(np.float32) / 255.0, rng=rng, **dataclasses.asdict(params))
        return {
            "rainy": to_uint8(rainy),
            "clean": clean,
            "name": source.name,
            "segmentation": segmentation,
            "rain_direction": np.int32(round(params.angle)),
            "rain_radius": np.float32(params.blur_sigma),
        }
