"""Shared code of the manual-download deraining builders (rain100h, rain100l, ddn, did, agan, rain800,
real_rain).

None of these benchmarks can be downloaded by TFDS: each builder reads a ``manual_dir`` that holds the
archive as its authors (or a redistributor) ship it, finds the split folders in it (the manual_dir may
be the archive's top folder, its contents, or a folder a few levels above it) and writes TFRecords.
This module holds everything they share:

* the features (``rainy`` / ``clean`` uint8 RGB images, ``name`` text) and the base builder that turns
  a list of `Source` records per split into examples;
* the manual_dir check (`manual_root`) and its error, which names the dataset, the layout it expects
  and where to get it (`ManualDataError`);
* the folder search (`walk_folders`, `find_split_folder`), case- and separator-insensitive folder
  names (`norm_name`), natural sorting (`natural_key`);
* decoding to uint8 RGB with errors that name the file, pairing by key with an error for a rainy file
  without a partner, size checks (`ImagePairError`), side-by-side splitting;
* the Rain100H / Rain100L family (`Rain100Builder`): one base for both builders and all the layouts
  their redistributions use.

All errors are ``ValueError`` subclasses so that callers (``erl_derain.data.streams.prepare``) can
wrap them. The manual_dir must be a local folder (the TFDS ``data_dir`` that receives the TFRecords
may be anywhere ``tf.io.gfile`` reaches).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from erl_derain.data.image_io import IMAGE_EXTENSIONS, ImageTooLarge, check_declared_size, check_size, load_rgb
from erl_derain.metrics import to_uint8

HOW_TO_BUILD = (
    "Build it with:\n"
    "  import tensorflow_datasets as tfds, tfds_builders\n"
    "  builder = tfds.builder('{name}', data_dir=...)\n"
    "  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir='/path/to/manual_dir'))\n"
    "(or `erl-derain prepare --dataset={name} --manual_dir=/path/to/manual_dir`).")

MAX_SEARCH_DEPTH = 4  # how far below the manual_dir split folders are looked for
_SKIPPED_DIRS = {"__macosx", "$recycle.bin"}


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


MAX_REPORTED = 50  # bad files listed in one error


class ManualDataError(ValueError):
    """The manual_dir is missing or empty, or holds none of the folders this dataset expects."""


class ImagePairError(ValueError):
    """A source file is unreadable or too small, has no partner, or differs in size from its partner."""


# --------------------------------------------------------------------------------------------------
# Names, sorting, folder search
# --------------------------------------------------------------------------------------------------

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key that orders ``rain-2`` before ``rain-10`` (digit runs compare as numbers)."""
    parts = _DIGITS.split(text)  # str, digits, str, digits, ... (types alternate at fixed positions)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), text


def norm_name(name: str) -> str:
    """Folder names compare case-insensitively, with runs of spaces, '_' and '-' equivalent
    (``rainy image`` == ``rainy_image``, ``DID-MDN-test`` == ``did_mdn_test``)."""
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


def canonical_key(token: str) -> str:
    """Pairing key: digit strings compare as numbers (``rain-001`` pairs with ``norain-1``)."""
    return str(int(token)) if token.isdigit() else token


@dataclasses.dataclass(frozen=True)
class Folder:
    path: Path
    rel: tuple[str, ...]  # path components below the manual_dir (() for the manual_dir itself)

    @property
    def depth(self) -> int:
        return len(self.rel)

    @property
    def name(self) -> str:
        return self.path.name

    def shown(self) -> str:
        return "<manual_dir>/" + "/".join(self.rel) if self.rel else f"the manual_dir itself ({self.path})"


def _scandir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: natural_key(e.name))
    except OSError:
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def walk_folders(root: Path, max_depth: int = MAX_SEARCH_DEPTH) -> list[Folder]:
    """The manual_dir and its sub-folders down to ``max_depth`` levels (hidden folders and macOS
    ``__MACOSX`` debris skipped), breadth first, each level in natural order."""
    out = [Folder(root, ())]
    frontier = [out[0]]
    for _ in range(max_depth):
        nxt = []
        for folder in frontier:
            for entry in _scandir(folder.path):
                if entry.name.startswith(".") or norm_name(entry.name) in _SKIPPED_DIRS or not _is_dir(entry):
                    continue
                nxt.append(Folder(Path(entry.path), folder.rel + (entry.name,)))
        out.extend(nxt)
        frontier = nxt
    return out


def child_dir(folder: Path, *names: str) -> Path | None:
    """The sub-folder of ``folder`` called one of ``names`` (first name first; see `norm_name`)."""
    entries = [e for e in _scandir(folder) if _is_dir(e)]
    for name in names:
        for entry in entries:
            if norm_name(entry.name) == norm_name(name):
                return Path(entry.path)
    return None


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (by extension, any case), in natural order."""
    return [Path(e.path) for e in _scandir(folder)
            if e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.name.startswith(".") and not _is_dir(e)]


def files_by_key(folder: Path, pattern: re.Pattern) -> dict[str, Path]:
    """``{key: path}`` of the images of ``folder`` whose stem fully matches ``pattern`` (key = group 1,
    digits compared as numbers); two files with one key raise `ImagePairError` naming both."""
    out: dict[str, Path] = {}
    for path in image_files(folder):
        m = pattern.fullmatch(path.stem)
        if not m:
            continue
        key = canonical_key(m.group(1))
        if key in out:
            raise ImagePairError(f"{out[key]} and {path} are both example {key!r} of {folder}; remove one")
        out[key] = path
    return out


def find_split_folder(folders: Sequence[Folder], names: Sequence[str], recognise: Callable[[Path], object],
                      *, exclude: Iterable[str] = (), notes: list[str] | None = None):
    """The folder for one split: the first of ``names`` (in order of preference) for which some folder
    with that name holds a layout ``recognise`` accepts (it returns None otherwise). Folders below a
    folder named in ``exclude`` (another dataset's name) are ignored. Among several hits the shallowest
    wins; two at the same depth raise `ManualDataError`. Returns ``(Folder, recognise(...))`` or None;
    folders with a matching name but no recognised layout are described in ``notes``."""
    excluded = {norm_name(n) for n in exclude}
    for name in names:
        wanted = norm_name(name)
        hits = []
        for folder in folders:
            if norm_name(folder.name) != wanted:
                continue
            if any(norm_name(part) in excluded for part in folder.rel[:-1]):
                continue
            found = recognise(folder.path)
            if found:
                hits.append((folder, found))
            elif notes is not None:
                notes.append(f"{folder.shown()} is named like a split folder but holds no layout this builder reads")
        if hits:
            best = min(h[0].depth for h in hits)
            top = [h for h in hits if h[0].depth == best]
            if len(top) > 1:
                listed = "\n  ".join(h[0].shown() for h in top)
                raise ManualDataError(f"several folders could be the same split:\n  {listed}\n"
                                      "point manual_dir at a folder that holds only one of them")
            return top[0]
    return None


# --------------------------------------------------------------------------------------------------
# The manual_dir
# --------------------------------------------------------------------------------------------------


def manual_root(dl_manager, dataset: str, instructions: str) -> Path:
    """The manual_dir as a local `Path`; a missing or empty one raises `ManualDataError` with the
    dataset's instructions (what it is, the layout, where to get it)."""
    try:
        root = dl_manager.manual_dir
    except (AssertionError, OSError):  # TFDS: "does not exist or is empty"; a file: NotADirectoryError
        raw = getattr(dl_manager, "_manual_dir", None)
        raise ManualDataError(
            f"{dataset}: the manual_dir {raw} does not exist or is empty. {dataset} cannot be downloaded "
            f"automatically; its files must be put there by hand (a manual_dir is passed as "
            f"tfds.download.DownloadConfig(manual_dir=...); the default is <data_dir>/downloads/manual).\n\n"
            f"{instructions.strip()}") from None
    text = os.fspath(root)
    if "://" in text:
        raise ManualDataError(f"{dataset}: manual_dir {text} must be a local folder (the data_dir receiving the "
                              "TFRecords may be remote)")
    return Path(text)


def no_data_error(dataset: str, root: Path, instructions: str, notes: Sequence[str] = (),
                  what: str = "none of the folders it expects") -> ManualDataError:
    """The error for a manual_dir that holds files, but not this dataset's."""
    entries = [e.name + ("/" if _is_dir(e) else "") for e in _scandir(root) if not e.name.startswith(".")]
    shown = ", ".join(entries[:12]) + (f", ... ({len(entries)} entries)" if len(entries) > 12 else "")
    extra = "".join(f"\n  note: {n}" for n in notes)
    return ManualDataError(
        f"{dataset}: found {what} in manual_dir {root} (searched {MAX_SEARCH_DEPTH} levels down; it holds: "
        f"{shown or 'nothing'}).{extra}\n\n{instructions.strip()}")


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def read_rgb(path: Path | str) -> np.ndarray:
    """``path`` as uint8 HxWx3 RGB, read by ``erl_derain.data.image_io.load_rgb`` (upright; grey becomes
    three equal channels, alpha is dropped, 16-bit is rounded to 8-bit); an unreadable file raises
    `ImagePairError` naming it."""
    try:
        return to_uint8(load_rgb(os.fspath(path)))
    except ValueError as err:  # load_rgb's messages start with the path
        raise ImagePairError(str(err)) from err


def read_mask(path: Path | str) -> np.ndarray:
    """A rain-region mask as uint8 HxWx1 with values 0/1: any non-zero pixel (any channel) is rain."""
    image = read_rgb(path)
    return (image.max(axis=-1, keepdims=True) > 0).astype(np.uint8)


def check_same_size(**images: tuple[np.ndarray, Path | str]) -> None:
    """``check_same_size(rainy=(array, path), clean=(array, path), ...)``: equal heights and widths,
    else `ImagePairError` naming every file and its size."""
    sizes = {role: (arr.shape[:2], path) for role, (arr, path) in images.items()}
    if len({s for s, _ in sizes.values()}) > 1:
        listed = ", ".join(f"{role} {path} is {s[1]}x{s[0]}" for role, (s, path) in sizes.items())
        raise ImagePairError(f"image sizes differ (width x height): {listed}")


def load_pair(rainy_path: Path, clean_path: Path) -> tuple[np.ndarray, np.ndarray]:
    rainy, clean = read_rgb(rainy_path), read_rgb(clean_path)
    check_same_size(rainy=(rainy, rainy_path), clean=(clean, clean_path))
    return rainy, clean


def split_side_by_side(image: np.ndarray, path: Path | str, rainy_side: str) -> tuple[np.ndarray, np.ndarray]:
    """(rainy, clean) from a file holding the two images side by side. Both halves are ``w // 2``
    pixels wide: columns ``[0, w//2)`` and ``[w//2, 2*(w//2))``; an odd width drops the last column
    (the authors' loaders crop at ``w/2``). A file narrower than 2 pixels raises `ImagePairError`."""
    if rainy_side not in ("left", "right"):
        raise ValueError(f"rainy_side must be 'left' or 'right', not {rainy_side!r}")
    h, w = image.shape[:2]
    half = w // 2
    if half < 1:
        raise ImagePairError(f"{path}: {w}x{h} pixels is too narrow to hold a rainy and a clean image side by side")
    left, right = image[:, :half], image[:, half:2 * half]
    return (left, right) if rainy_side == "left" else (right, left)


def read_rgb_keep_jpeg(path: Path) -> bytes | np.ndarray:
    """For large photos: an upright (no EXIF orientation, or orientation 1) RGB or grey JPEG comes back
    as its own bytes (stored as-is, no re-encoding; the Image feature decodes it to 3 channels), after
    a full decode with Pillow that rejects truncated or corrupt files by name. Anything else (PNG,
    BMP, WebP, CMYK JPEG, a JPEG to be rotated by its EXIF orientation) is decoded by `read_rgb`
    (upright, as ``load_rgb`` reads it) and stored as PNG."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        from PIL import Image  # pylint: disable=import-outside-toplevel

        try:
            data = path.read_bytes()
            check_declared_size(data, str(path))  # from the SOF header, before Pillow sees the file
            with Image.open(io.BytesIO(data)) as im:
                fmt, mode = im.format, im.mode
                check_size(im.width, im.height, str(path))  # before im.load() decodes the pixels
                try:
                    orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                except Exception:  # pylint: disable=broad-except  (a malformed EXIF block: load_rgb ignores it too)
                    orientation = 1
                im.load()  # decode every pixel: truncated/corrupt files fail here
        except ImageTooLarge as err:
            raise ImagePairError(str(err)) from None
        except Image.DecompressionBombError as err:  # a size the header check could not read
            raise ImagePairError(f"{path}: image too large ({err})") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise ImagePairError(f"{path}: not a readable JPEG image ({err})") from err
        if fmt == "JPEG" and mode in ("RGB", "L") and orientation not in range(2, 9):
            return data
    return read_rgb(path)


_EXIF_ORIENTATION = 0x0112


# --------------------------------------------------------------------------------------------------
# Features and the base builder
# --------------------------------------------------------------------------------------------------


def rgb_image() -> tfds.features.Image:
    return tfds.features.Image(shape=(None, None, 3), dtype=np.uint8)


def paired_features(**extra) -> dict:
    """``rainy`` / ``clean`` (uint8 RGB, any size) and ``name`` (text), plus ``extra`` features."""
    return {"rainy": rgb_image(), "clean": rgb_image(), "name": tfds.features.Text(), **extra}


@dataclasses.dataclass(frozen=True)
class Source:
    """One example to be: its name (also its key) and the files it is read from."""

    name: str
    rainy: Path                   # the rainy file, or the side-by-side file
    clean: Path | None = None     # None for side-by-side or unpaired files
    mask: Path | None = None      # Rain100H/L rain-region mask, when the distribution has one
    label: str | None = None      # DID density


def sources_from_keys(rainy: Mapping[str, Path], clean: Mapping[str, Path], *, clean_dir: Path,
                      partner_hint: Callable[[str], str], masks: Mapping[str, Path] | None = None) -> list[Source]:
    """Pair rainy and clean files on their keys; the example's name is the clean file's stem. A rainy
    file without a clean partner raises `ImagePairError` naming it (and the file it looked for)."""
    missing = [key for key in rainy if key not in clean]
    if missing:
        more = f" (and {len(missing) - 1} more rainy files)" if len(missing) > 1 else ""
        raise ImagePairError(f"rainy image {rainy[missing[0]]} has no clean partner: no "
                             f"{partner_hint(missing[0])} in {clean_dir}{more}")
    masks = masks or {}
    return [Source(name=clean[key].stem, rainy=rainy[key], clean=clean[key], mask=masks.get(key))
            for key in sorted(rainy, key=natural_key)]


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the manual-download builders: subclasses set the metadata and implement `_find_splits`
    (the examples of each split found in the manual_dir) and `_example` (one example's features)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    HOMEPAGE: str = ""
    SUPERVISED = True
    NOT_FOUND = "none of the folders it expects"  # completes "found ... in manual_dir X"
    # Published split sizes; a different count is built as found, with a warning.
    EXPECTED_COUNTS: Mapping[str, tuple[int, ...]] = {}

    def _features(self) -> dict:
        return paired_features()

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(self._features()),
            supervised_keys=("rainy", "clean") if self.SUPERVISED else None,
            homepage=self.HOMEPAGE,
        )

    def _find_splits(self, root: Path) -> tuple[dict[str, list[Source]], list[str]]:
        """``({split: sources}, notes)``; splits whose folders are absent are left out or empty."""
        raise NotImplementedError

    def _example(self, source: Source) -> dict:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        root = manual_root(dl_manager, self.name, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        try:
            found, notes = self._find_splits(root)
        except (ManualDataError, ImagePairError) as err:
            raise self._named(err) from err
        splits = {split: sources for split, sources in found.items() if sources}
        if not splits:
            raise no_data_error(self.name, root, self.MANUAL_DOWNLOAD_INSTRUCTIONS, notes, what=self.NOT_FOUND)
        for split, sources in splits.items():
            expected = self.EXPECTED_COUNTS.get(split)
            if expected and len(sources) not in expected:
                logging.warning("%s: split %r has %d examples in %s; the published set has %s. Building what "
                                "is there.", self.name, split, len(sources), root,
                                " or ".join(str(n) for n in expected))
            logging.info("%s: split %r: %d examples", self.name, split, len(sources))
        return {split: self._generate_examples(sources) for split, sources in splits.items()}

    def _generate_examples(self, sources: Sequence[Source]) -> Iterator[tuple[str, dict]]:
        """Every readable pair; bad files (unreadable, truncated, sizes that differ) are collected and
        reported together at the end of the split, so one build shows them all."""
        problems = []
        for source in sources:
            try:
                example = self._example(source)
            except (ManualDataError, ImagePairError) as err:
                problems.append(str(err))
                continue
            yield source.name, example
        if problems:
            shown = "\n".join(f"  - {p}" for p in problems[:MAX_REPORTED])
            more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
            raise ImagePairError(f"{self.name}: {len(problems)} bad example(s) of {len(sources)}; fix or remove "
                                 f"these files and build again:\n{shown}{more}")

    def _named(self, err: ValueError) -> ValueError:
        """The same error with the dataset's name in front (once)."""
        text = str(err)
        return err if text.startswith(f"{self.name}:") else type(err)(f"{self.name}: {text}")


# --------------------------------------------------------------------------------------------------
# Rain100H / Rain100L (Yang et al., JORDER, CVPR 2017) and their redistributions
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _PairLayout:
    """Rainy files in ``rainy_dir`` (a path below the split folder, "" = the folder itself) matching
    ``rainy_re``, clean files in the first existing of ``clean_dirs`` matching ``clean_re``."""

    label: str
    rainy_dir: tuple[str, ...]
    rainy_re: re.Pattern
    clean_dirs: tuple[tuple[str, ...], ...]
    clean_re: re.Pattern
    partner: str  # how the clean file is named, for errors ({} = the key)


_NORAIN = re.compile(r"norain-(\d+)", re.I)
RAIN100_LAYOUTS = (
    _PairLayout("PKU archive", ("rain", "X2"), re.compile(r"(?:no)?rain-(\d+)x2", re.I), (("norain",),),
                _NORAIN, "norain-{}.*"),
    _PairLayout("JORDER-E", ("rain",), re.compile(r"(?:no)?rain-(\d+)(?:x2)?", re.I), (("norain",),),
                _NORAIN, "norain-{}.*"),
    _PairLayout("PReNet test copy", ("rainy",), re.compile(r"rain-(\d+)", re.I), ((), ("norain",)),
                _NORAIN, "norain-{}.*"),
    _PairLayout("Rain13K / MPRNet", ("input",), re.compile(r"(.+)"), (("target",),), re.compile(r"(.+)"),
                "{}.*"),
    _PairLayout("JORDER / PReNet train copy", (), re.compile(r"rain-(\d+)", re.I), ((),), _NORAIN,
                "norain-{}.*"),
)
_RAINREGION = re.compile(r"rainregion-(\d+)", re.I)


def _sub(folder: Path, parts: tuple[str, ...]) -> Path | None:
    for part in parts:
        folder = child_dir(folder, part)
        if folder is None:
            return None
    return folder


def rain100_sources(folder: Path) -> list[Source] | None:
    """The pairs of one Rain100H/L split folder in any known layout (first layout that has rainy files
    wins), with ``rainregion-N`` masks where present; None if no layout matches."""
    for layout in RAIN100_LAYOUTS:
        rainy_dir = _sub(folder, layout.rainy_dir)
        if rainy_dir is None:
            continue
        rainy = files_by_key(rainy_dir, layout.rainy_re)
        if not rainy:
            continue
        clean_dirs = [d for d in (_sub(folder, parts) for parts in layout.clean_dirs) if d is not None]
        if not clean_dirs:
            continue
        clean_dir, clean = clean_dirs[0], {}
        for candidate in clean_dirs:  # the first clean folder that has clean files
            clean = files_by_key(candidate, layout.clean_re)
            if clean:
                clean_dir = candidate
                break
        masks: dict[str, Path] = {}
        for mask_dir in dict.fromkeys([folder, rainy_dir, clean_dir, child_dir(folder, "rainregion")]):
            if mask_dir is not None:
                masks.update({k: v for k, v in files_by_key(mask_dir, _RAINREGION).items() if k not in masks})
        return sources_from_keys(rainy, clean, clean_dir=clean_dir, masks=masks,
                                 partner_hint=layout.partner.format)
    return None


RAIN100_LAYOUT_HELP = """\
Each split folder may hold any of these layouts (N = image number):
  rain/X2/norain-Nx2.png   + norain/norain-N.png      (PKU archives)
  rain/norain-N.png        + norain/norain-N.png      (JORDER-E)
  rain-N.png + norain-N.png [+ rainregion-N.png, rainstreak-N.png] in one folder (JORDER, PReNet train)
  rainy/rain-NNN.png       + norain-NNN.png           (PReNet test copies)
  input/N.png              + target/N.png             (MPRNet/Restormer 'Rain13K' copies)
rainregion-N.png masks (any non-zero pixel = rain) fill the rain_mask feature where present."""


class Rain100Builder(ManualBuilder, skip_registration=True):
    """Rain100H and Rain100L share everything but their folder names and sizes."""

    LEVEL = ""  # "H" or "L"
    HOMEPAGE = "https://www.icst.pku.edu.cn/struct/Projects/joint_rain_removal.html"

    @classmethod
    def split_dir_names(cls) -> dict[str, tuple[str, ...]]:
        word = {"H": "Heavy", "L": "Light"}[cls.LEVEL]
        return {"train": (f"RainTrain{cls.LEVEL}", f"rain_data_train_{word}", f"Rain100{cls.LEVEL}_train", "train"),
                "test": (f"Rain100{cls.LEVEL}", f"rain_data_test_{word}", f"Rain100{cls.LEVEL}_test", "test")}

    @classmethod
    def other_dataset_names(cls) -> tuple[str, ...]:
        other = {"H": "L", "L": "H"}[cls.LEVEL]
        word = {"H": "Light", "L": "Heavy"}[cls.LEVEL]
        return (f"RainTrain{other}", f"Rain100{other}", f"rain_data_train_{word}", f"rain_data_test_{word}",
                f"Rain100{other}_train", f"Rain100{other}_test", f"Rain200{other}", "Rain13K", "Rain1400", "Rain800",
                "Test100", "Test1200", "Test2800")

    def _features(self) -> dict:
        return paired_features(
            rain_mask=tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
            has_rain_mask=tfds.features.Tensor(shape=(), dtype=np.bool_),
        )

    def _find_splits(self, root: Path):
        folders = walk_folders(root)
        notes: list[str] = []
        out = {}
        for split, names in self.split_dir_names().items():
            hit = find_split_folder(folders, names, rain100_sources, exclude=self.other_dataset_names(), notes=notes)
            if hit:
                folder, sources = hit
                logging.info("%s: %s split from %s", self.name, split, folder.path)
                out[split] = sources
        return out, notes

    def _example(self, source: Source) -> dict:
        rainy, clean = load_pair(source.rainy, source.clean)
        if source.mask is not None:
            mask = read_mask(source.mask)
            check_same_size(rainy=(rainy, source.rainy), rain_mask=(mask, source.mask))
        else:
            mask = np.zeros(rainy.shape[:2] + (1,), np.uint8)
        return {"rainy": rainy, "clean": clean, "name": source.name, "rain_mask": mask,
                "has_rain_mask": source.mask is not None}


def rain100_instructions(level: str) -> str:
    word = {"H": "Heavy", "L": "Light"}[level]
    train_count = "1800 pairs; some redistributions have 1254" if level == "H" else "200 pairs"
    return f"""\
Rain100{level} (Yang et al., "Deep Joint Rain Detection and Removal from a Single Image", CVPR 2017):
train split = RainTrain{level} ({train_count}), test split = Rain100{level} (100 pairs).
Put the folders into the manual_dir (they may sit up to {MAX_SEARCH_DEPTH} levels down), e.g.
  <manual_dir>/
    RainTrain{level}/     rain-1.png, norain-1.png, rainregion-1.png, ...      -> train
    Rain100{level}/       rain/X2/norain-1x2.png, norain/norain-1.png, ...    -> test
Split folder names accepted: train: RainTrain{level}, rain_data_train_{word}, Rain100{level}_train, train;
test: Rain100{level}, rain_data_test_{word}, Rain100{level}_test, test (any case; the generic
train/test only outside another dataset's folder). A split is built only if its folder is found.
{RAIN100_LAYOUT_HELP}
Get it from the JORDER project page
  https://www.icst.pku.edu.cn/struct/Projects/joint_rain_removal.html
(the site now serves newer 200-image test sets; published numbers use the 100-image ones), or the
copies of PReNet (https://github.com/csdwren/PReNet), JORDER-E
(https://github.com/flyywh/JORDER-E-Deep-Image-Deraining-TPAMI-2019-Journal) or MPRNet
(https://github.com/swz30/MPRNet, Deraining/Datasets/test/Rain100{level}).
""" + HOW_TO_BUILD.format(name=f"rain100{level.lower()}")
