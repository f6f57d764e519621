"""Test helpers of the manual-download builders: tiny fake archives in each dataset's real layout,
building into a temporary data_dir, and the shared real data.

``python -m tfds_builders.builder_testing`` (re)writes every builder's ``dummy_data/`` folder (tiny
noise images, well under a few KB each, laid out as the real archives). The tests call the same
writers to make other layouts in ``tmp_path``.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

PACKAGE_DIR = Path(__file__).resolve().parent
H, W = 12, 16  # dummy image size (height, width)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def noise(seed: int, h: int = H, w: int = W, channels: int = 3) -> np.ndarray:
    """A uint8 noise image, different for each seed (so no two examples are identical)."""
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_image(path: Path, rgb: np.ndarray, quality: int = 90) -> Path:
    """Write a uint8 RGB (or grey / RGBA) image; the extension picks the format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = rgb
    if rgb.ndim == 3 and rgb.shape[-1] == 3:
        img = rgb[..., ::-1]
    elif rgb.ndim == 3 and rgb.shape[-1] == 4:
        img = rgb[..., [2, 1, 0, 3]]
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix, np.ascontiguousarray(img), params)
    assert ok, path
    path.write_bytes(buf.tobytes())
    return path


def write_mask(path: Path, seed: int, h: int = H, w: int = W) -> Path:
    """A JORDER-style rain-region mask: 0 background, 255 (rain) on a random ~30% of pixels."""
    mask = (np.random.default_rng(seed).random((h, w)) < 0.3).astype(np.uint8) * 255
    return write_image(path, mask)


def read_back(path: Path) -> np.ndarray:
    """A written file's pixels as uint8 RGB, decoded as the builders decode (``load_rgb``)."""
    from tfds_builders.paired_common import read_rgb  # pylint: disable=import-outside-toplevel

    return read_rgb(path)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.concatenate([left, right], axis=1)


# --------------------------------------------------------------------------------------------------
# Layouts (each writes into `root` and returns it)
# --------------------------------------------------------------------------------------------------


def jorder_folder(folder: Path, numbers, *, seed: int = 0, masks: bool = True, streaks: bool = True) -> Path:
    """Original JORDER / PReNet train layout: rain-N, norain-N (+ rainregion-N, rainstreak-N) in one folder."""
    for n in numbers:
        write_image(folder / f"rain-{n}.png", noise(seed + 2 * n))
        write_image(folder / f"norain-{n}.png", noise(seed + 2 * n + 1))
        if masks:
            write_mask(folder / f"rainregion-{n}.png", seed + n)
        if streaks:
            write_image(folder / f"rainstreak-{n}.png", noise(seed + 1000 + n))
    return folder


def pku_folder(folder: Path, numbers, *, seed: int = 0) -> Path:
    """PKU archive layout: rain/X2/norain-Nx2.png + norain/norain-N.png."""
    for n in numbers:
        write_image(folder / "rain" / "X2" / f"norain-{n}x2.png", noise(seed + 2 * n))
        write_image(folder / "norain" / f"norain-{n}.png", noise(seed + 2 * n + 1))
    return folder


def jorder_e_folder(folder: Path, numbers, *, seed: int = 0) -> Path:
    """JORDER-E layout: rain/norain-N.png + norain/norain-N.png."""
    for n in numbers:
        write_image(folder / "rain" / f"norain-{n}.png", noise(seed + 2 * n))
        write_image(folder / "norain" / f"norain-{n}.png", noise(seed + 2 * n + 1))
    return folder


def prenet_test_folder(folder: Path, numbers, *, seed: int = 0) -> Path:
    """PReNet's test copies: rainy/rain-NNN.png + norain-NNN.png next to rainy/."""
    for n in numbers:
        write_image(folder / "rainy" / f"rain-{n:03d}.png", noise(seed + 2 * n))
        write_image(folder / f"norain-{n:03d}.png", noise(seed + 2 * n + 1))
    return folder


def rain13k_folder(folder: Path, numbers, *, seed: int = 0) -> Path:
    """MPRNet/Restormer copies: input/N.png + target/N.png."""
    for n in numbers:
        write_image(folder / "input" / f"{n}.png", noise(seed + 2 * n))
        write_image(folder / "target" / f"{n}.png", noise(seed + 2 * n + 1))
    return folder


def ddn_folder(root: Path, images, renders, *, seed: int = 0, rainy="rainy image", clean="ground truth") -> Path:
    for n in images:
        write_image(root / clean / f"{n}.jpg", noise(seed + 100 * n))
        for k in renders:
            write_image(root / rainy / f"{n}_{k}.jpg", noise(seed + 100 * n + k))
    return root


def did_tree(root: Path, train: dict[str, int], test: int, *, seed: int = 0) -> Path:
    """DID-MDN-training/Rain_<Density>/train2018new/i.jpg and DID-MDN-test/i.jpg (rainy left | clean right)."""
    s = seed
    for density, count in train.items():
        for i in range(count):
            s += 2
            write_image(root / "DID-MDN-training" / f"Rain_{density}" / "train2018new" / f"{i}.jpg",
                        side_by_side(noise(s), noise(s + 1)))
    for i in range(test):
        s += 2
        write_image(root / "DID-MDN-test" / f"{i}.jpg", side_by_side(noise(s), noise(s + 1)))
    return root


def agan_tree(root: Path, counts: dict[str, tuple[int, str]], *, seed: int = 0) -> Path:
    """<split>/data/N_rain.<ext> + <split>/gt/N_clean.<ext>; counts = {split: (n, ext)}."""
    s = seed
    for split, (count, ext) in counts.items():
        for i in range(count):
            s += 2
            write_image(root / split / "data" / f"{i}_rain.{ext}", noise(s))
            write_image(root / split / "gt" / f"{i}_clean.{ext}", noise(s + 1))
    return root


def rain800_tree(root: Path, train: int, test: int, *, seed: int = 0, train_dir: str = "training",
                 test_dir: str = "test_syn") -> Path:
    """Side-by-side files, clean left | rainy right as in the authors' archive."""
    s = seed
    for folder, count in ((train_dir, train), (test_dir, test)):
        for i in range(1, count + 1):
            s += 2
            write_image(root / folder / f"{i}.jpg", side_by_side(noise(s), noise(s + 1)))
    return root


def real_rain_tree(root: Path) -> Path:
    """An RGB JPEG, a grey JPEG, an RGBA PNG and a BMP in a sub-folder."""
    write_image(root / "1.jpg", noise(1, 20, 24))
    write_image(root / "2.jpg", noise(2, 18, 14, channels=1))
    write_image(root / "3.png", noise(3, 10, 12, channels=4))
    write_image(root / "night" / "4.bmp", noise(4, 8, 10))
    return root


CITYSCAPES_SIZE = (16, 32)  # dummy Cityscapes images: height, width (2:1 like the real 1024x2048)
CITYSCAPES_LABEL_IDS = tuple(range(34))  # labelIds of the gtFine maps (0..33; -1 license plate is never stored)


def cityscapes_label_ids(seed: int, h: int = CITYSCAPES_SIZE[0], w: int = CITYSCAPES_SIZE[1],
                         block: int = 4) -> np.ndarray:
    """A fake ``*_gtFine_labelIds.png`` map: uint8 HxW of random labelIds (trained-on and ignored ones)
    in ``block`` x ``block`` patches, so that nearest-neighbour downscaling keeps regions."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(np.array(CITYSCAPES_LABEL_IDS, np.uint8), size=(-(-h // block), -(-w // block)))
    return np.kron(coarse, np.ones((block, block), np.uint8))[:h, :w]


def cityscapes_tree(root: Path, cities: dict[str, dict[str, int]], *, seed: int = 0,
                    size: tuple[int, int] = CITYSCAPES_SIZE, images_dir: str = "leftImg8bit",
                    labels_dir: str = "gtFine", extras: bool = True) -> Path:
    """The Cityscapes archive layout with tiny fake images: ``cities = {split: {city: n_images}}``
    writes ``<images_dir>/<split>/<city>/<city>_000000_<frame>_leftImg8bit.png`` (noise) and
    ``<labels_dir>/<split>/<city>/<city>_000000_<frame>_gtFine_labelIds.png`` (`cityscapes_label_ids`),
    plus with ``extras`` the archive's other files (``*_gtFine_color.png``, ``*_gtFine_instanceIds.png``,
    ``*_gtFine_polygons.json``, ``license.txt``, ``README``), which the builder must ignore."""
    root = Path(root)
    h, w = size
    s = seed
    for split, per_city in cities.items():
        for city, count in per_city.items():
            for i in range(count):
                s += 1
                stem = f"{city}_000000_{19 + 10 * i:06d}"
                write_image(root / images_dir / split / city / f"{stem}_leftImg8bit.png", noise(s, h, w))
                labels = root / labels_dir / split / city
                write_image(labels / f"{stem}_gtFine_labelIds.png", cityscapes_label_ids(s, h, w))
                if extras:
                    write_image(labels / f"{stem}_gtFine_color.png", noise(s + 5000, h, w))
                    write_image(labels / f"{stem}_gtFine_instanceIds.png", cityscapes_label_ids(s + 7000, h, w))
                    (labels / f"{stem}_gtFine_polygons.json").write_text('{"imgHeight": %d, "imgWidth": %d, '
                                                                         '"objects": []}\n' % (h, w))
    if extras:
        (root / "license.txt").write_text("fake Cityscapes test fixture (noise images, no real data)\n")
        (root / "README").write_text("fake Cityscapes test fixture\n")
    return root


# --------------------------------------------------------------------------------------------------
# dummy_data/ of every builder
# --------------------------------------------------------------------------------------------------


def make_dummy_data(name: str, root: Path | None = None) -> Path:
    """Write builder `name`'s dummy_data (the layout its conformance test expects) into `root`
    (default: the builder's own ``dummy_data/``)."""
    root = Path(root) if root is not None else PACKAGE_DIR / name / "dummy_data"
    if name == "rain100h":  # train: original JORDER with masks; test: PKU archive
        jorder_folder(root / "RainTrainH", [1, 2, 3], seed=10)
        pku_folder(root / "Rain100H", [1, 2], seed=50)
    elif name == "rain100l":  # train: PReNet's copy (no masks); test: PReNet's test copy
        jorder_folder(root / "RainTrainL", [1, 2], seed=110, masks=False, streaks=False)
        prenet_test_folder(root / "Rain100L", [1, 2], seed=150)
    elif name == "ddn":
        ddn_folder(root / "Rain14000", [1, 2, 901], [1, 2], seed=200)
    elif name == "did":
        did_tree(root, {"Heavy": 2, "Medium": 1, "Light": 1}, 2, seed=300)
    elif name == "agan":
        agan_tree(root, {"train": (2, "png"), "test_a": (1, "png"), "test_b": (2, "jpg")}, seed=400)
    elif name == "rain800":
        rain800_tree(root, 3, 2, seed=500)
    elif name == "real_rain":
        real_rain_tree(root)
    elif name == "cityscapes_rain":  # the two archives unpacked into one folder
        cityscapes_tree(root, {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}}, seed=600)
    else:
        raise ValueError(f"no dummy data for {name!r}")
    return root


DUMMY_DATASETS = ("rain100h", "rain100l", "ddn", "did", "agan", "rain800", "real_rain", "cityscapes_rain")


# --------------------------------------------------------------------------------------------------
# Building and the shared real data
# --------------------------------------------------------------------------------------------------


def build(builder_cls, manual_dir, data_dir, config=None):
    """Prepare `builder_cls` from `manual_dir` into `data_dir` (the TFDS Python API, no CLI)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    kwargs = {"config": config} if config is not None else {}
    builder = builder_cls(data_dir=str(data_dir), **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def examples(builder, split: str) -> list[dict]:
    """All examples of `split` as numpy dicts, sorted by name."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    out = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
    return sorted(out, key=lambda ex: ex["name"])


def symlink(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def shared_data_dir() -> Path | None:
    """The shared real data (``$ERL_DERAIN_SHARED_DATA``, by default a ``shared/data`` folder beside
    the checkout), as ``tests/conftest.py`` finds it; None when absent."""
    env = os.environ.get("ERL_DERAIN_SHARED_DATA")
    path = Path(env) if env else PACKAGE_DIR.parents[1] / "shared" / "data"
    return path if path.is_dir() else None


if __name__ == "__main__":
    import shutil

    for dataset in DUMMY_DATASETS:
        target = PACKAGE_DIR / dataset / "dummy_data"
        shutil.rmtree(target, ignore_errors=True)
        make_dummy_data(dataset, target)
        files = [p for p in target.rglob("*") if p.is_file()]
        print(f"{dataset}: {len(files)} files, {sum(p.stat().st_size for p in files)} bytes")
