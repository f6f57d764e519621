"""Paired (rainy, clean) `tf.data` pipelines from TFDS datasets or plain folders.

Entry point: :func:`paired_dataset`. It yields dicts ``{'rainy', 'clean', 'name'}`` with
``rainy``/``clean`` float32 ``[B, h, w, 3]`` in [0, 1] and ``name`` a ``tf.string`` ``[B]``.

Sources
-------
* ``'<tfds name>'`` or ``'<name>/<config>'``: a TFDS dataset with ``rainy``/``clean`` Image features
  (and usually ``name`` Text). Importing :mod:`tfds_builders` registers the erl_derain builders; a
  dataset that is not prepared yet is prepared on first use.
* ``'folder:/path'``: ``/path/rainy/`` and ``/path/clean/`` holding images paired by file stem
  (``rainy/a.jpg`` pairs with ``clean/a.png``). If ``/path/<split>/rainy`` exists it is used for
  that split, otherwise ``/path`` serves every split. Files are ordered naturally
  (``rain-2`` before ``rain-10``) and ``name`` is the shared stem.

Determinism and resumption (training mode)
------------------------------------------
The training stream is a pure function of ``(seed, position)``, where position ``p`` counts examples
from the start of training (``epoch = p // N`` for ``N`` examples):

* order: each epoch is an independent permutation keyed on ``(seed, epoch)``. Folders (and TFDS
  splits small enough to cache, see ``cache_limit_bytes``) use a full stateless permutation; larger
  TFDS splits stream their serialized records through a shuffle buffer whose seed is derived from
  ``(seed, epoch)`` (the global ``tf.random.set_seed`` does not influence it);
* augmentation: the crop window and the flip of example ``p`` come from stateless random ops keyed
  on ``(seed, p)``; rainy and clean are stacked channel-wise and cropped/flipped together, so
  they always get the same window and flip.

``start_index=k`` therefore rebuilds the stream from epoch ``k // N`` and skips ``k % N`` elements
*before* any file is read or decoded (folders skip indices; TFDS skips serialized records), and
yields exactly what an uninterrupted run would have yielded from position ``k`` on. A resumed
trainer passes ``start_index = step * batch_size``.

Errors
------
Problems with a source raise :class:`DatasetError` (a ``ValueError``) naming the file or flag and
what was expected; folders are checked up front (pairing, image headers, sizes against each other
and against the crop) before any TF work. Decode failures that only show while iterating surface as
``tf.errors.InvalidArgumentError``; :func:`diagnose_folder` then decodes every file fully and names
the culprit.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

import tensorflow as tf

from erl_derain.data.image_io import IMAGE_EXTENSIONS

__all__ = [
    "DatasetError",
    "FOLDER_PREFIX",
    "IMAGE_EXTENSIONS",
    "available_builders",
    "diagnose_folder",
    "list_folder_pairs",
    "load_builder",
    "paired_dataset",
    "prepare",
]

log = logging.getLogger(__name__)

FOLDER_PREFIX = "folder:"

# TFDS splits whose serialized size is at most this are cached in memory and fully permuted each
# epoch; larger ones stream through a shuffle buffer of `shuffle_buffer` records.
DEFAULT_CACHE_LIMIT_BYTES = 256 * 2**20

# PIL formats that `tf.io.decode_image` decodes; anything else (TIFF, ...) is decoded with OpenCV/PIL.
_TF_NATIVE_FORMATS = frozenset({"PNG", "JPEG", "MPO", "GIF", "BMP", "WEBP"})
_TF_NATIVE_BMP_MODES = frozenset({"RGB", "RGBA", "L", "P"})

# Independent random streams derived from the user's seed.
_STREAM_SHUFFLE = 0
_STREAM_AUGMENT = 1
_STREAM_GEOMETRY = 2  # scale and rotation (crop_mode="scale_rotate")
_STREAM_COLOR = 3     # RGB permutation (shuffle_channels)
_NUM_STREAMS = 4

_MAX_LISTED = 20  # problems listed in one error message


class DatasetError(ValueError):
    """Bad dataset/folder/file; the message names the file/flag and what was expected."""


# --------------------------------------------------------------------------------------------------
# Folders: pairing and header scan
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageHeader:
    """What the up-front scan learns about one file without decoding its pixels."""

    path: str
    width: int
    height: int
    format: str
    mode: str

    @property
    def tf_native(self) -> bool:
        """True if `tf.io.decode_image` can decode it (else the OpenCV/PIL fallback is used)."""
        if self.format == "BMP":
            return self.mode in _TF_NATIVE_BMP_MODES
        return self.format in _TF_NATIVE_FORMATS and self.mode != "CMYK"


def _natural_key(text: str):
    """Sort key that orders digit runs numerically: rain-2 < rain-10."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", text)]


def _format_list(items: list[str]) -> str:
    """Indented bullet list, cut after _MAX_LISTED items."""
    shown = "\n".join(f"  - {item}" for item in items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f"\n  ... and {len(items) - _MAX_LISTED} more"
    return shown


def _strip_folder_prefix(path: str) -> str:
    if path.startswith(FOLDER_PREFIX):
        path = path[len(FOLDER_PREFIX):]
    if not path:
        raise DatasetError(f"empty folder path: use '{FOLDER_PREFIX}/path/to/data' with rainy/ and clean/ inside")
    return os.path.expanduser(path)


def _resolve_folder(path: str, split: str | None) -> str:
    """The directory holding rainy/ and clean/: `path/<split>` if it has rainy/, else `path`."""
    root = _strip_folder_prefix(path)
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder {root!r} does not exist (expected a directory with rainy/ and clean/)")
    if split and os.path.isdir(os.path.join(root, split, "rainy")):
        root = os.path.join(root, split)
    missing = [sub for sub in ("rainy", "clean") if not os.path.isdir(os.path.join(root, sub))]
    if missing:
        where = f"{root}/rainy and {root}/clean"
        if split:
            where += f" (or {os.path.join(root, split)}/rainy and .../clean for split {split!r})"
        raise DatasetError(
            f"dataset folder {root!r} has no {' or '.join(s + '/' for s in missing)} sub-folder: expected {where} "
            f"holding rainy and clean images with matching file names")
    return root


def _list_images(directory: str) -> dict[str, str]:
    """Map file stem -> path for the image files directly inside `directory`."""
    by_stem: dict[str, str] = {}
    duplicates = []
    for entry in sorted(os.listdir(directory)):
        full = os.path.join(directory, entry)
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in IMAGE_EXTENSIONS or not os.path.isfile(full):
            continue
        if stem in by_stem:
            duplicates.append(f"{by_stem[stem]} and {full}")
            continue
        by_stem[stem] = full
    if duplicates:
        raise DatasetError(
            f"two images with the same name (stem) in {directory}; each name must appear once:\n"
            + _format_list(duplicates))
    return by_stem


def list_folder_pairs(path: str, split: str | None = None) -> list[tuple[str, str, str]]:
    """Pairs ``(rainy_path, clean_path, name)`` of a paired folder, in natural file-name order.

    Args:
      path: a directory (or ``'folder:/dir'``) with ``rainy/`` and ``clean/`` sub-folders, or with
        ``<split>/rainy`` and ``<split>/clean`` when `split` is given.
      split: optional sub-folder to prefer (``train``, ``test``, ...).

    Images (png/jpg/jpeg/bmp/tif/tiff, any case) pair on the file stem; other files are ignored.

    Raises:
      DatasetError: a sub-folder is missing, has no images, or an image has no partner.
    """
    root = _resolve_folder(path, split)
    rainy_dir, clean_dir = os.path.join(root, "rainy"), os.path.join(root, "clean")
    rainy, clean = _list_images(rainy_dir), _list_images(clean_dir)
    exts = "|".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    for directory, images in ((rainy_dir, rainy), (clean_dir, clean)):
        if not images:
            raise DatasetError(f"no images in {directory}: expected files ending in {exts}")
    problems = [f"rainy image {rainy[s]} has no clean partner (expected {clean_dir}/{s}.<{exts}>)"
                for s in rainy if s not in clean]
    problems += [f"clean image {clean[s]} has no rainy partner (expected {rainy_dir}/{s}.<{exts}>)"
                 for s in clean if s not in rainy]
    if problems:
        raise DatasetError(f"unpaired images in dataset folder {root} (pairs match on the file name "
                           f"without extension):\n" + _format_list(problems))
    return [(rainy[s], clean[s], s) for s in sorted(rainy, key=_natural_key)]


def _read_header(path: str) -> _ImageHeader:
    """Size/format of `path` from its header; `verify()` catches truncated or corrupt PNGs."""
    try:
        with Image.open(path) as im:
            header = _ImageHeader(path, im.width, im.height, im.format or "", im.mode)
            im.verify()
        return header
    except Exception as pil_error:  # PIL raises many types for bad files
        if path.lower().endswith((".tif", ".tiff")):  # e.g. 16-bit RGB TIFF that PIL cannot open
            image = _cv2_imread(path)
            if image is not None:
                return _ImageHeader(path, image.shape[1], image.shape[0], "TIFF", "cv2")
        raise DatasetError(f"cannot read image {path}: {pil_error} (expected a readable "
                           f"PNG/JPEG/BMP/TIFF file)") from pil_error


def _cv2_imread(path: str):
    """OpenCV's reader at full bit depth (None on failure); imported lazily."""
    import cv2  # pylint: disable=import-outside-toplevel

    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


def _scan_headers(paths: list[str]) -> dict[str, _ImageHeader]:
    """Header of every path (threaded: the scan is I/O bound); raises naming all unreadable files."""
    headers, problems = {}, []
    workers = max(1, min(16, len(paths)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for path, result in zip(paths, pool.map(_safe_header, paths)):
            if isinstance(result, DatasetError):
                problems.append(str(result))
            else:
                headers[path] = result
    if problems:
        raise DatasetError(f"{len(problems)} unreadable image file(s):\n" + _format_list(problems))
    return headers


def _safe_header(path: str):
    try:
        return _read_header(path)
    except DatasetError as err:
        return err


def _check_pairs(pairs, headers, crop_size: int | None) -> None:
    """Raise naming files whose rainy/clean sizes differ or that are smaller than the crop."""
    problems = []
    for rainy, clean, _ in pairs:
        r, c = headers[rainy], headers[clean]
        if (r.width, r.height) != (c.width, c.height):
            problems.append(f"size mismatch: rainy {rainy} is {r.width}x{r.height} (WxH) but clean {clean} "
                            f"is {c.width}x{c.height}; a pair must have the same size")
        elif crop_size is not None and min(r.width, r.height) < crop_size:
            problems.append(f"{rainy} is {r.width}x{r.height} (WxH), smaller than the {crop_size}x{crop_size} "
                            f"crop (crop_size={crop_size}); use a smaller crop or drop the image")
    if problems:
        raise DatasetError(f"{len(problems)} bad image pair(s):\n" + _format_list(problems))


def diagnose_folder(path: str, split: str | None = None, crop_size: int | None = None) -> list[tuple[str, str]]:
    """Decode every image of a paired folder fully and return ``[(file, problem), ...]``.

    Slow (full decodes) but thorough: meant for naming the culprit after a decode error surfaced
    while iterating. Checks pairing, full decodes with PIL and with TF's own decoder (or the
    OpenCV/PIL fallback that the pipeline uses for formats TF cannot read), pair sizes and the crop.
    An empty list means no problem was found.
    """
    try:
        pairs = list_folder_pairs(path, split)
    except DatasetError as err:
        return [(_strip_folder_prefix(path), str(err))]
    problems: list[tuple[str, str]] = []
    sizes: dict[str, tuple[int, int]] = {}
    for rainy, clean, _ in pairs:
        for file in (rainy, clean):
            try:
                header = _read_header(file)
                with Image.open(file) as im:
                    im.load()
                if header.tf_native:
                    data = tf.io.read_file(file)
                    shape = tf.io.decode_image(data, channels=3, expand_animations=False).shape
                else:
                    shape = _fallback_decode(file.encode()).shape
                sizes[file] = (int(shape[1]), int(shape[0]))
            except Exception as err:  # report everything, whatever the decoder raised
                problems.append((file, f"cannot decode: {type(err).__name__}: {err}".strip()))
        if rainy in sizes and clean in sizes:
            (rw, rh), (cw, ch) = sizes[rainy], sizes[clean]
            if (rw, rh) != (cw, ch):
                problems.append((rainy, f"size {rw}x{rh} (WxH) differs from its clean partner {clean} ({cw}x{ch})"))
            elif crop_size is not None and min(rw, rh) < crop_size:
                problems.append((rainy, f"size {rw}x{rh} (WxH) is smaller than the {crop_size}x{crop_size} crop"))
    return problems


# --------------------------------------------------------------------------------------------------
# Decoding and augmentation (graph code)
# --------------------------------------------------------------------------------------------------


def _fallback_decode(path: bytes) -> np.ndarray:
    """Decode formats `tf.io.decode_image` lacks (TIFF, 16-bit, ...) to float32 RGB [h, w, 3] in [0, 1]."""
    path = path.decode() if isinstance(path, bytes) else str(path)
    image = _cv2_imread(path)
    if image is not None:
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        elif image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        else:
            image = image[..., 2::-1]  # BGR(A) -> RGB, alpha dropped
    else:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L"):
                image = np.repeat(np.asarray(im, dtype=np.uint16)[..., None], 3, axis=-1)
            else:
                image = np.asarray(im.convert("RGB"))
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    else:
        image = np.clip(image.astype(np.float32), 0.0, 1.0)
    return np.ascontiguousarray(image, dtype=np.float32)


def _decode_bytes(data: tf.Tensor) -> tf.Tensor:
    """Encoded PNG/JPEG/BMP/GIF bytes -> float32 [h, w, 3] in [0, 1] (8- and 16-bit, gray, RGBA)."""
    image = tf.io.decode_image(data, channels=3, dtype=tf.float32, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _decode_file(path: tf.Tensor, native: tf.Tensor | bool) -> tf.Tensor:
    """Decode one file; `native` selects `tf.io.decode_image` vs the OpenCV/PIL fallback."""

    def fallback():
        image = tf.numpy_function(_fallback_decode, [path], tf.float32, stateful=False)
        image.set_shape([None, None, 3])
        return image

    if native is True:
        return _decode_bytes(tf.io.read_file(path))
    if native is False:
        return fallback()
    return tf.cond(native, lambda: _decode_bytes(tf.io.read_file(path)), fallback)


def _op_seed(seed: int, stream: int, index: tf.Tensor) -> tf.Tensor:
    """A [2] int64 key for stateless random ops, distinct for every (seed, stream, index)."""
    return tf.stack([tf.constant(seed * _NUM_STREAMS + stream, tf.int64), tf.cast(index, tf.int64)])


def crop_flip(stack, position, *, seed: int, crop_size: int | None, flip: bool):
    """Stateless random crop and flip of an ``[h, w, c]`` stack (images concatenated on channels so
    that they share the window), keyed on (seed, position)."""
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(_op_seed(seed, _STREAM_AUGMENT, position), 2))
    if crop_size is not None:
        stack = tf.image.stateless_random_crop(stack, [crop_size, crop_size, stack.shape[-1]], seed=crop_seed)
    if flip:
        stack = tf.image.stateless_random_flip_left_right(stack, seed=flip_seed)
    return stack


def _random_crop_flip(rainy, clean, position, *, seed: int, crop_size: int | None, flip: bool,
                      segmentation=None, scale_rotate: bool = False, min_scale: float = 0.5):
    """Same stateless random crop and flip for rainy and clean (and a segmentation map), keyed on
    (seed, position).

    ``scale_rotate`` (the intensity-aware paper's "scaling, cropping, flipping and rotation") first
    resizes by a factor drawn in [min_scale, 1] (bilinear; nearest for the segmentation; never below
    the crop) and rotates the crop by a random multiple of 90 degrees. Returns (rainy, clean,
    segmentation) when a segmentation is given, else (rainy, clean)."""
    if scale_rotate:
        scale_seed, rot_seed = tf.unstack(
            tf.random.experimental.stateless_split(_op_seed(seed, _STREAM_GEOMETRY, position), 2))
        size = tf.cast(tf.shape(rainy)[:2], tf.float32)
        lowest = float(min_scale)
        if crop_size is not None:  # never scale below the crop
            lowest = tf.maximum(lowest, crop_size / tf.reduce_min(size))
        factor = tf.random.stateless_uniform([], scale_seed, minval=0.0, maxval=1.0)
        factor = lowest + (1.0 - lowest) * factor
        new = tf.cast(tf.math.ceil(size * factor), tf.int32)
        rainy = tf.image.resize(rainy, new, method="bilinear", antialias=True)
        clean = tf.image.resize(clean, new, method="bilinear", antialias=True)
        if segmentation is not None:
            segmentation = tf.image.resize(segmentation, new, method="nearest")
    parts = [rainy, clean] + ([tf.cast(segmentation, tf.float32)] if segmentation is not None else [])
    stack = crop_flip(tf.concat(parts, axis=-1), position, seed=seed, crop_size=crop_size, flip=flip)  # one for all
    if scale_rotate:
        k = tf.random.stateless_uniform([], rot_seed, minval=0, maxval=4, dtype=tf.int32)
        stack = tf.image.rot90(stack, k)
    if segmentation is None:
        return stack[..., :3], stack[..., 3:6]
    return stack[..., :3], stack[..., 3:6], tf.cast(tf.round(stack[..., 6:]), tf.uint8)


def _center_crop(image: tf.Tensor, crop_size: int) -> tf.Tensor:
    shape = tf.shape(image)
    top, left = (shape[0] - crop_size) // 2, (shape[1] - crop_size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, crop_size, crop_size)


TEN_CROPS = 10  # crop_mode="ten_crop": corners + centre of the image and of its mirror
CROP_MODES = ("random", "ten_crop", "scale_rotate")


def _ten_crop(rainy, clean, k, crop_size: int):
    """Crop ``k`` (0..9) of the ten-crop scheme, the same window for rainy and clean: k % 5 = top-left,
    top-right, bottom-left, bottom-right, centre; k >= 5 on the horizontally mirrored image."""
    pair = tf.concat([rainy, clean], axis=-1)
    pair = tf.cond(k >= 5, lambda: tf.image.flip_left_right(pair), lambda: pair)
    shape = tf.shape(pair)
    dh, dw = shape[0] - crop_size, shape[1] - crop_size
    corner = tf.cast(k % 5, tf.int32)
    top = tf.gather(tf.stack([0, 0, dh, dh, dh // 2]), corner)
    left = tf.gather(tf.stack([0, dw, 0, dw, dw // 2]), corner)
    pair = tf.image.crop_to_bounding_box(pair, top, left, crop_size, crop_size)
    return pair[..., :3], pair[..., 3:]


def _finish(ds: tf.data.Dataset, *, training: bool, batch_size: int) -> tf.data.Dataset:
    # Training batches of a stream that never ends: drop_remainder keeps static batch shapes.
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)


def _training_positions(num_examples: int, start_index: int, epoch_fn) -> tf.data.Dataset:
    """(position, element) for positions start_index, start_index+1, ... of the epoch stream.

    `epoch_fn(epoch)` returns the dataset of one epoch (num_examples elements, cheap: indices or
    serialized records). The stream restarts at epoch start_index // N and skips the remainder.
    """
    start_epoch, offset = divmod(start_index, num_examples)
    ds = tf.data.Dataset.counter(start_epoch).flat_map(epoch_fn)
    return ds.skip(offset).enumerate(start=start_index)


# --------------------------------------------------------------------------------------------------
# Folder pipeline
# --------------------------------------------------------------------------------------------------


def _folder_dataset(path, split, *, batch_size, crop_size, training, seed, start_index, flip, crop_mode="random"):
    scale_rotate = crop_mode == "scale_rotate"
    pairs = list_folder_pairs(path, split)
    headers = _scan_headers([p for pair in pairs for p in pair[:2]])
    _check_pairs(pairs, headers, crop_size)
    if crop_size is None and batch_size > 1:
        sizes = {(headers[r].width, headers[r].height) for r, _, _ in pairs}
        if len(sizes) > 1:
            raise DatasetError(
                f"batch_size={batch_size} without crop_size needs images of one size, but folder {path} has "
                f"{len(sizes)} sizes (e.g. {sorted(sizes)[:3]}): set crop_size or use batch_size=1")

    num = len(pairs)
    rainy_paths = tf.constant([r for r, _, _ in pairs])
    clean_paths = tf.constant([c for _, c, _ in pairs])
    names = tf.constant([n for _, _, n in pairs])
    native = np.array([[headers[r].tf_native, headers[c].tf_native] for r, c, _ in pairs])
    # Keep the graph free of the fallback branch when every file is TF-decodable (the usual case).
    native_table = True if native.all() else (False if not native.any() else tf.constant(native))

    def read(index):
        if isinstance(native_table, bool):
            r_native = c_native = native_table
        else:
            r_native, c_native = native_table[index, 0], native_table[index, 1]
        rainy = _decode_file(rainy_paths[index], r_native)
        clean = _decode_file(clean_paths[index], c_native)
        return rainy, clean, names[index]

    if training:
        ten = crop_mode == "ten_crop"
        per_epoch = num * TEN_CROPS if ten else num  # ten_crop: every (image, crop) is one example

        def epoch_indices(epoch):
            perm = tf.random.experimental.stateless_shuffle(
                tf.range(per_epoch, dtype=tf.int64), seed=_op_seed(seed, _STREAM_SHUFFLE, epoch))
            return tf.data.Dataset.from_tensor_slices(perm)

        def load(position, index):
            if ten:
                rainy, clean, name = read(index // TEN_CROPS)
                rainy, clean = _ten_crop(rainy, clean, index % TEN_CROPS, crop_size)
            else:
                rainy, clean, name = read(index)
                rainy, clean = _random_crop_flip(rainy, clean, position, seed=seed, crop_size=crop_size, flip=flip,
                                                 scale_rotate=scale_rotate)
            return {"rainy": rainy, "clean": clean, "name": name}

        ds = _training_positions(per_epoch, start_index, epoch_indices)
    else:
        def load(index):
            rainy, clean, name = read(index)
            if crop_size is not None:
                rainy, clean = _center_crop(rainy, crop_size), _center_crop(clean, crop_size)
            return {"rainy": rainy, "clean": clean, "name": name}

        ds = tf.data.Dataset.range(start_index, num)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, training=training, batch_size=batch_size)


# --------------------------------------------------------------------------------------------------
# TFDS pipeline
# --------------------------------------------------------------------------------------------------


_builders_import_error: list[str] = []  # warn once about a failed `tfds_builders` import


def _import_builders() -> None:
    """Import `tfds_builders` so that TFDS knows the erl_derain datasets."""
    try:
        import tfds_builders  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError as err:  # a partial install should not break other TFDS datasets
        if not _builders_import_error:
            _builders_import_error.append(str(err))
            log.warning("could not import tfds_builders (erl_derain datasets unavailable): %s", err)


def available_builders() -> list[str]:
    """Names of the TFDS builders registered by the `tfds_builders` package."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    _import_builders()
    names, stack = set(), [tfds.core.DatasetBuilder]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("tfds_builders.") and getattr(cls, "name", None):
            names.add(cls.name)
    # Abstract bases shared by several builders are subclasses too, but not registered datasets.
    return sorted(names & set(tfds.list_builders(with_community_datasets=False)))


def _tfds_builder(dataset: str, data_dir: str | None, manual_dir: str | None = None):
    """`tfds.builder(dataset)`, prepared (from `manual_dir` for the benchmarks that cannot be
    downloaded); every failure becomes a DatasetError naming the dataset."""
    builder = load_builder(dataset, data_dir)
    if not builder.is_prepared():
        prepare(builder, manual_dir=manual_dir)
    return builder


def load_builder(dataset, data_dir: str | None = None):
    """The TFDS builder of `dataset` (a name, ``name/config``, or a builder), not prepared; an
    unknown name raises a DatasetError listing the erl_derain datasets."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    _import_builders()
    try:
        if isinstance(dataset, tfds.core.DatasetBuilder):  # e.g. a builder made with a custom config
            builder, dataset = dataset, dataset.name
        else:
            builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        builders = available_builders()
        listed = "\n".join(f"  - {n}" for n in builders) or (
            "  (none: the tfds_builders package did not import: "
            f"{_builders_import_error[0] if _builders_import_error else 'unknown error'})")
        raise DatasetError(
            f"unknown dataset {dataset!r}. erl_derain TFDS datasets:\n{listed}\n"
            f"or a folder of pairs: '{FOLDER_PREFIX}/path' with rainy/ and clean/ sub-folders "
            f"(any other TFDS dataset with 'rainy' and 'clean' image features works too)") from err
    except ValueError as err:  # e.g. an unknown config or version
        raise DatasetError(f"cannot load TFDS dataset {dataset!r}: {err}") from err
    return builder


def prepare(builder, *, manual_dir: str | None = None) -> None:
    """Write the TFRecords of `builder` (a TFDS builder) into its data_dir, reading the benchmark's
    files from `manual_dir` (TFDS's default: ``<data_dir>/downloads/manual``)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    log.info("preparing TFDS dataset %s in %s", builder.name, builder.data_dir)
    if manual_dir is not None:
        manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
        if not os.path.isdir(manual_dir):
            raise DatasetError(f"--manual_dir={manual_dir}: no such folder (it should hold the files of "
                               f"dataset {builder.name!r}; see its instructions with `erl-derain prepare "
                               f"--dataset={builder.name}`)")
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=config)
    except (AssertionError, ValueError, OSError) as err:  # e.g. a missing or incomplete manual_dir
        raise DatasetError(f"TFDS dataset {builder.name!r} is not prepared (data_dir={builder.data_dir}) "
                           f"and preparing it failed: {err}") from err


# Features passed through when a dataset has them: the Rain100H/L rain-region masks (evaluation) and
# segmentation maps (cityscapes_rain; training, cropped with the images, and evaluation).
_EXTRA_FEATURES = ("rain_mask", "has_rain_mask", "segmentation")


def _tfds_records(builder, split: str):
    """Serialized (undecoded) (rainy, clean, name, extras) in file order, the split's size and bytes.

    ``extras`` holds the undecoded `_EXTRA_FEATURES` the dataset has."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    features = builder.info.features
    missing = [k for k in ("rainy", "clean") if k not in features]
    if missing:
        raise DatasetError(f"TFDS dataset {builder.name!r} has no {' / '.join(missing)} feature "
                           f"(features: {sorted(features.keys())}); paired pipelines need 'rainy' and 'clean' images")
    try:
        split_info = builder.info.splits[split]
    except (KeyError, ValueError) as err:
        raise DatasetError(f"TFDS dataset {builder.name!r} has no split {split!r} "
                           f"(available: {sorted(builder.info.splits.keys())})") from err
    decoders = {key: tfds.decode.SkipDecoding() for key in features.keys()}
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                            read_config=tfds.ReadConfig(try_autocache=False))
    has_name = "name" in features

    extra_keys = [k for k in _EXTRA_FEATURES if k in features]

    def select(index, example):
        name = example["name"] if has_name else tf.strings.join([split, tf.strings.as_string(index)], "-")
        return example["rainy"], example["clean"], name, {k: example[k] for k in extra_keys}

    ds = ds.enumerate().map(select)
    num, num_bytes = int(split_info.num_examples), int(split_info.num_bytes or 0)
    if not num_bytes:  # sub-splits ('train[:90%]') carry no size: estimate from the average record
        total = sum(int(info.num_examples) for info in builder.info.splits.values())
        num_bytes = int(int(builder.info.dataset_size or 0) * num / total) if total else 0
    return ds, num, num_bytes


def _static_size_check(builder, crop_size: int | None) -> None:
    """Fail early when TFDS metadata fixes the image size and it is below the crop."""
    if crop_size is None:
        return
    for key in ("rainy", "clean"):
        shape = builder.info.features[key].shape
        if shape[0] is not None and shape[1] is not None and min(shape[0], shape[1]) < crop_size:
            raise DatasetError(f"TFDS dataset {builder.name!r}: '{key}' images are {shape[1]}x{shape[0]} (WxH), "
                               f"smaller than the {crop_size}x{crop_size} crop (crop_size={crop_size})")


def _checked_decode(rainy_bytes, clean_bytes, name, dataset: str, crop_size: int | None):
    """Decode a pair and assert (in-graph, naming the example) equal sizes and >= crop."""
    rainy, clean = _decode_bytes(rainy_bytes), _decode_bytes(clean_bytes)
    r_shape, c_shape = tf.shape(rainy), tf.shape(clean)
    # tf.debugging.Assert takes `data` (the example's name and sizes); TF2's assert_equal does not.
    checks = [tf.debugging.Assert(
        tf.reduce_all(tf.equal(r_shape, c_shape)),
        [f"{dataset}: rainy and clean images differ in size; example", name,
         "rainy [h w c]", r_shape, "clean [h w c]", c_shape])]
    if crop_size is not None:
        checks.append(tf.debugging.Assert(
            tf.reduce_min(r_shape[:2]) >= crop_size,
            [f"{dataset}: image smaller than the {crop_size}x{crop_size} crop; example", name,
             "height", r_shape[0], "width", r_shape[1]]))
    with tf.control_dependencies(checks):
        return tf.identity(rainy), tf.identity(clean)


def _seeded_shuffle(ds: tf.data.Dataset, buffer_size: int, seed: int, epoch: tf.Tensor) -> tf.data.Dataset:
    """`ds.shuffle` with a seed derived from (seed, epoch) only. Call inside a dataset function.

    `Dataset.shuffle` pairs its op seed with the graph's global seed (`tf.random.set_seed`); clearing
    the seed of the function graph being traced makes the order depend on (seed, epoch) alone.
    """
    tf.compat.v1.get_default_graph().seed = None
    op_seed = tf.random.stateless_uniform([], seed=_op_seed(seed, _STREAM_SHUFFLE, epoch),
                                          minval=None, maxval=None, dtype=tf.int64)
    return ds.shuffle(buffer_size, seed=op_seed, reshuffle_each_iteration=False)


def _tfds_pipeline(builder, split, *, dataset, batch_size, crop_size, training, seed, start_index, flip,
                   shuffle_buffer, cache_limit_bytes, crop_mode="random"):
    """The paired pipeline over a prepared TFDS builder (see `paired_dataset`)."""
    scale_rotate = crop_mode == "scale_rotate"
    _static_size_check(builder, crop_size)
    records, num, num_bytes = _tfds_records(builder, split)
    if num == 0:
        raise DatasetError(f"TFDS dataset {dataset!r} split {split!r} has no examples")

    if training:
        if 0 < num_bytes <= cache_limit_bytes:
            records, buffer = records.cache(), num  # in memory: a full permutation per epoch
        else:
            buffer = max(1, min(shuffle_buffer, num))

        def load_training(position, record):
            rainy, clean = _checked_decode(*record[:3], dataset, crop_size)
            extras = record[3]
            if "segmentation" in extras:
                seg = tf.io.decode_png(extras["segmentation"], channels=1)
                rainy, clean, seg = _random_crop_flip(rainy, clean, position, seed=seed, crop_size=crop_size,
                                                      flip=flip, segmentation=seg, scale_rotate=scale_rotate)
                return {"rainy": rainy, "clean": clean, "segmentation": seg, "name": record[2]}
            rainy, clean = _random_crop_flip(rainy, clean, position, seed=seed, crop_size=crop_size, flip=flip,
                                             scale_rotate=scale_rotate)
            return {"rainy": rainy, "clean": clean, "name": record[2]}

        if crop_mode == "ten_crop":
            # Records are shuffled, decoded and cut into their ten crops, which a second seeded buffer
            # mixes across images; positions count crops (TEN_CROPS per record and epoch).
            def ten_crops(rainy_bytes, clean_bytes, name, extras):
                del extras  # masks are for evaluation
                rainy, clean = _checked_decode(rainy_bytes, clean_bytes, name, dataset, crop_size)
                return tf.data.Dataset.range(TEN_CROPS).map(
                    lambda k: dict(zip(("rainy", "clean"), _ten_crop(rainy, clean, k, crop_size)), name=name))

            def epoch_crops(epoch):
                crops = _seeded_shuffle(records, buffer, seed, epoch).flat_map(ten_crops)
                return _seeded_shuffle(crops, max(TEN_CROPS, min(shuffle_buffer, num * TEN_CROPS)),
                                       seed + 1, epoch)

            ds = _training_positions(num * TEN_CROPS, start_index, epoch_crops)
            load = lambda position, example: example  # noqa: E731  (already decoded and cropped)
        else:
            ds = _training_positions(num, start_index, lambda epoch: _seeded_shuffle(records, buffer, seed, epoch))
            load = load_training
    else:
        def load_evaluation(rainy_bytes, clean_bytes, name, extras):
            rainy, clean = _checked_decode(rainy_bytes, clean_bytes, name, dataset, crop_size)
            out = {"name": name}
            if "rain_mask" in extras:  # uint8 [h, w, 1], non-zero = rain
                out["rain_mask"] = tf.io.decode_png(extras["rain_mask"], channels=1)
                out["has_rain_mask"] = tf.cast(extras.get("has_rain_mask", True), tf.bool)
            if "segmentation" in extras:  # uint8 [h, w, 1] class ids, 255 = ignore
                out["segmentation"] = tf.io.decode_png(extras["segmentation"], channels=1)
            if crop_size is not None:
                rainy, clean = _center_crop(rainy, crop_size), _center_crop(clean, crop_size)
                for key in ("rain_mask", "segmentation"):
                    if key in out:
                        out[key] = _center_crop(out[key], crop_size)
            out.update(rainy=rainy, clean=clean)
            return out

        ds = records.skip(start_index)
        load = load_evaluation
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, training=training, batch_size=batch_size)


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def check_stream_arguments(batch_size, crop_size, start_index) -> None:
    """DatasetError for a batch size, crop or start position that no stream can take."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetError(f"batch_size must be a positive integer, got {batch_size!r}")
    if crop_size is not None and (not isinstance(crop_size, int) or crop_size < 1):
        raise DatasetError(f"crop_size must be a positive integer or None, got {crop_size!r}")
    if not isinstance(start_index, int) or start_index < 0:
        raise DatasetError(f"start_index must be a non-negative integer, got {start_index!r}")


def paired_dataset(dataset: str, split: str = "train", *, batch_size: int = 1, crop_size: int | None = None,
                   training: bool = True, seed: int = 0, start_index: int = 0, flip: bool = True,
                   data_dir: str | None = None, shuffle_buffer: int = 256,
                   cache_limit_bytes: int | None = None, manual_dir: str | None = None,
                   crop_mode: str = "random") -> tf.data.Dataset:
    """A `tf.data.Dataset` of paired rainy/clean batches.

    Args:
      dataset: a TFDS name (``'synthetic_rain'``, ``'name/config'``), ``'folder:/path'``, or a
        ``tfds.core.DatasetBuilder`` (prepared on first use).
      split: TFDS split (sub-split syntax such as ``'train[:90%]'`` works) or, for a folder, the
        sub-folder ``/path/<split>`` if it has ``rainy/`` (else ``/path`` is used for any split).
      batch_size: examples per batch.
      crop_size: side of the square crop; None keeps full images (then batch_size > 1 needs images of
        one size). Training crops at random, evaluation at the centre.
      crop_mode: ``'random'`` (a random window per example, optional flip), ``'ten_crop'`` (MENET:
        every image gives ten examples per epoch, the four corners and the centre of the image and of
        its mirror; ``flip`` is ignored; an epoch then holds ``10 * N`` examples) or
        ``'scale_rotate'`` (the intensity-aware paper: a random down-scaling in [0.5, 1] before the
        random crop, the optional flip, then a random rotation by a multiple of 90 degrees).
      training: True: endless, shuffled, randomly cropped/flipped stream with full batches only.
        False: one pass in file order, no augmentation, a last partial batch is kept.
      seed: the stream (order, crops, flips) is a deterministic function of (seed, position).
      start_index: number of examples already consumed (``step * batch_size`` when resuming); the
        result yields exactly what the uninterrupted stream yields from that position on. In
        evaluation it skips that many examples.
      flip: random horizontal flips in training.
      data_dir: TFDS data directory (None: the TFDS default).
      manual_dir: where the files of a benchmark that cannot be downloaded are (used when the TFDS
        dataset is not prepared yet; None: TFDS's ``<data_dir>/downloads/manual``).
      shuffle_buffer: shuffle buffer (in records) for TFDS splits too large to cache.
      cache_limit_bytes: TFDS splits up to this serialized size are cached in memory and fully
        permuted per epoch (default `DEFAULT_CACHE_LIMIT_BYTES`).

    Returns:
      Batches ``{'rainy': float32 [B,h,w,3] in [0,1], 'clean': same, 'name': tf.string [B]}``, plus
      ``'segmentation'`` (uint8 [B,h,w,1], 255 = ignore) for datasets with segmentation maps; in
      evaluation, datasets with rain-region masks add ``'rain_mask'`` (uint8 [B,h,w,1], non-zero =
      rain) and ``'has_rain_mask'`` (bool [B]).

    Raises:
      DatasetError: bad arguments, unknown dataset, or a bad folder/file (named in the message).
    """
    check_stream_arguments(batch_size, crop_size, start_index)
    if crop_mode not in CROP_MODES:
        raise DatasetError(f"--crop_mode must be one of {', '.join(CROP_MODES)}, got {crop_mode!r}")
    if crop_mode == "ten_crop" and crop_size is None and training:
        raise DatasetError("--crop_mode=ten_crop needs --crop_size (the side of the ten crops)")
    if not isinstance(dataset, str):
        return _tfds_pipeline(
            _tfds_builder(dataset, data_dir, manual_dir), split, dataset=dataset.name, batch_size=batch_size,
            crop_size=crop_size, training=training, seed=int(seed), start_index=start_index,
            flip=bool(flip) and training, shuffle_buffer=shuffle_buffer, crop_mode=crop_mode,
            cache_limit_bytes=DEFAULT_CACHE_LIMIT_BYTES if cache_limit_bytes is None else cache_limit_bytes)
    if not dataset:
        raise DatasetError(f"dataset must be a TFDS name or '{FOLDER_PREFIX}/path', got {dataset!r}")
    flip = bool(flip) and training
    seed = int(seed)

    if dataset.startswith(FOLDER_PREFIX):
        return _folder_dataset(dataset, split, batch_size=batch_size, crop_size=crop_size, training=training,
                               seed=seed, start_index=start_index, flip=flip, crop_mode=crop_mode)
    builder = _tfds_builder(dataset, data_dir, manual_dir)
    return _tfds_pipeline(
        builder, split, dataset=dataset, batch_size=batch_size, crop_size=crop_size, training=training,
        seed=seed, start_index=start_index, flip=flip, shuffle_buffer=shuffle_buffer, crop_mode=crop_mode,
        cache_limit_bytes=DEFAULT_CACHE_LIMIT_BYTES if cache_limit_bytes is None else cache_limit_bytes)


RGB_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def shuffle_channels(ds: tf.data.Dataset, *, seed: int, start_index: int, batch_size: int) -> tf.data.Dataset:
    """A colour augmentation for achromatic rain: the RGB channels of each example's rainy and clean
    images are permuted alike, by one of the six permutations, drawn from (seed, the batch's first
    example position). Rain added equally to R, G and B (``rain_synthesis``, and the veil model with
    a grey atmospheric light) stays a valid pair, while a few photos give greens and blues that their
    own colours lack. ``ds`` is a training stream of `paired_dataset` that starts at example
    ``start_index`` with batches of ``batch_size`` (deterministic, so a resumed run sees the same)."""
    perms = tf.constant(RGB_PERMUTATIONS, tf.int32)

    def permute(index, batch):
        first = tf.cast(start_index, tf.int64) + index * batch_size
        size = tf.shape(batch["rainy"])[0]
        k = tf.random.stateless_uniform([size], _op_seed(seed, _STREAM_COLOR, first), minval=0, maxval=6,
                                        dtype=tf.int32)
        order = tf.gather(perms, k)  # [B, 3]
        out = dict(batch)
        for key in ("rainy", "clean"):
            out[key] = tf.gather(batch[key], order, axis=-1, batch_dims=1)
        return out

    return ds.enumerate().map(permute, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def num_examples(dataset: str, split: str = "train", *, data_dir: str | None = None,
                 manual_dir: str | None = None) -> int:
    """Number of examples (pairs) in a split: used to turn epochs into steps."""
    if isinstance(dataset, str) and dataset.startswith(FOLDER_PREFIX):
        return len(list_folder_pairs(dataset, split))
    builder = _tfds_builder(dataset, data_dir, manual_dir)
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError) as err:
        raise DatasetError(f"TFDS dataset {dataset!r} has no split {split!r} "
                           f"(available: {sorted(builder.info.splits.keys())})") from err
