"""Public building blocks of the erl_derain `tf.data` streams, paired (:mod:`.pipelines`) and
unpaired (:mod:`.unpaired`).

Both stream modules are assembled from the functions here and from nothing private of each other;
this module knows no dataset, no method and no feature name beyond the ``rainy``/``clean``/``name``
that every source has.

Errors and arguments
    :class:`DatasetError` (a ``ValueError`` naming the file, flag or feature and what was expected),
    :func:`format_list`, :func:`check_stream_arguments`.
Files
    :func:`folder_path` (``'folder:/x'`` -> ``/x``), :func:`folder_images` (stem -> path of the images
    of one directory), :func:`natural_key` (``rain-2`` before ``rain-10``), :class:`ImageHeader`,
    :func:`read_header` and :func:`scan_headers` (size/format from the header, every unreadable file
    named at once, before any TF work).
Decoding
    :func:`decode_bytes` (TF-native formats), :func:`fallback_decode` (TIFF, 16-bit, ... through
    OpenCV/PIL), :func:`decode_file` (either, chosen per file by :func:`native_table` /
    :func:`native_at` from the header scan), :func:`decode_map` (uint8 PNG per-pixel maps).
Keyed randomness
    Every random choice is a stateless op keyed on ``op_seed(seed, stream, index)``, a distinct key
    for each (seed, named stream, index): ``STREAM_SHUFFLE`` (epoch orders), ``STREAM_AUGMENT``
    (crop window, flip), ``STREAM_GEOMETRY`` (scale, rotation), ``STREAM_COLOR`` (channel order), ``STREAM_RAIN_FREE`` (rain-free pairs).
    The global ``tf.random.set_seed`` never enters.
Epochs and positions
    A training stream is a pure function of (seed, position), position ``p`` counting examples from
    the start of training. :func:`training_positions` turns "one epoch as a dataset of cheap
    elements" (indices or serialized records) into the endless ``(position, element)`` stream that
    starts at any ``start_index`` by skipping those cheap elements; :func:`permuted_epochs` (a
    stateless permutation per epoch) and :func:`seeded_shuffle` (a shuffle buffer keyed on (seed,
    epoch)) are the two epoch orders.
Augmentation
    :func:`crop_flip`, :func:`random_crop_flip` (images and per-pixel maps cut alike, optional
    scale and half-turn), :func:`center_crop`, :func:`ten_crop`.
Batching
    :func:`finish`.
Sharding
    :class:`Rows`: the rows of every global batch that one input pipeline (one worker of a
    multi-worker run) reads. Given to :func:`training_positions` and :func:`finish`, the stream keeps
    only the positions of those rows, before anything is decoded, and batches them: each worker
    reads and decodes only the examples its replicas train on, and the rows of all workers put side
    by side are the global batch of the unsharded stream (same order, same crops, same resume).
TFDS records
    :func:`tfds_builder` (a builder, or a name that TFDS already knows: this module imports no
    builder package; the erl_derain catalog is :mod:`erl_derain.datasets`), :func:`resolve_builder`,
    :func:`prepare`, :func:`prepared_builder`, :func:`require_features`, :func:`feature_kinds`, :func:`split_size`,
    :func:`tfds_records` (serialized records in file order, skipping cheaply), :func:`cache_or_buffer`,
    :func:`excluded_examples` / :func:`exclude_records` (drop examples by a feature value).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image

import tensorflow as tf

from erl_derain.data import image_io
from erl_derain.data.image_io import IMAGE_EXTENSIONS

__all__ = [
    "CATALOG_MODULE", "DEFAULT_CACHE_LIMIT_BYTES", "DatasetError", "FOLDER_PREFIX",
    "IMAGE_EXTENSIONS",
    "ImageHeader", "MAP", "MAX_LISTED", "NUM_STREAMS", "STREAM_AUGMENT", "STREAM_COLOR", "STREAM_GEOMETRY",
    "STREAM_RAIN_FREE", "STREAM_SHUFFLE", "TEN_CROPS", "UnknownDatasetError", "VALUE", "cache_or_buffer", "center_crop",
    "check_stream_arguments", "crop_flip", "decode_bytes", "decode_file", "decode_map", "exclude_records",
    "excluded_examples", "fallback_decode", "feature_kinds", "finish", "fits_in_memory", "folder_images",
    "folder_path", "format_list", "native_at", "native_table", "natural_key", "op_seed", "permuted_epochs",
    "prepare", "prepared_builder", "Rows", "random_crop_flip", "read_header", "require_features", "resolve_builder",
    "scan_headers",
    "seeded_shuffle", "split_size", "ten_crop", "tfds_builder", "tfds_records", "training_positions",
]

log = logging.getLogger(__name__)

FOLDER_PREFIX = "folder:"
MAX_LISTED = 20  # problems listed in one error message

# TFDS splits whose serialized size is at most this are cached in memory and fully permuted each
# epoch; larger ones stream through a shuffle buffer.
DEFAULT_CACHE_LIMIT_BYTES = 256 * 2**20

# The module that registers erl_derain's TFDS builders (outside erl_derain.data, which imports no
# builder package); named in errors, and used by the transitional bridge of `resolve_builder`.
CATALOG_MODULE = "erl_derain.datasets"

# Named independent random streams derived from the user's seed (see `op_seed`).
STREAM_SHUFFLE = 0   # epoch orders
STREAM_AUGMENT = 1   # crop window and flip
STREAM_GEOMETRY = 2  # scale and rotation (crop_mode="scale_rotate")
STREAM_COLOR = 3     # RGB permutation (shuffle_channels)
NUM_STREAMS = 4  # the streams above: their keys (seed * NUM_STREAMS + stream) stay as they were
STREAM_RAIN_FREE = 4  # which pairs become rain-free (rain_free_pairs); keyed apart, below

TEN_CROPS = 10  # ten_crop: corners + centre of the image and of its mirror

# Kinds of the extra features of a TFDS dataset (`feature_kinds`).
MAP = "map"      # a per-pixel uint8 map (an Image feature, PNG): cut with the images
VALUE = "value"  # anything else (a scalar, a class label, a text): passed through unchanged

# PIL formats that `tf.io.decode_image` decodes; anything else (TIFF, ...) is decoded with OpenCV/PIL.
_TF_NATIVE_FORMATS = frozenset({"PNG", "JPEG", "MPO", "GIF", "BMP", "WEBP"})
_TF_NATIVE_BMP_MODES = frozenset({"RGB", "RGBA", "L", "P"})


# --------------------------------------------------------------------------------------------------
# Errors and arguments
# --------------------------------------------------------------------------------------------------


class DatasetError(ValueError):
    """Bad dataset/folder/file; the message names the file/flag and what was expected."""


class UnknownDatasetError(DatasetError):
    """A dataset name that TFDS has no builder for (see `tfds_builder`)."""


def format_list(items: Sequence[str]) -> str:
    """Indented bullet list, cut after `MAX_LISTED` items."""
    items = list(items)
    shown = "\n".join(f"  - {item}" for item in items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        shown += f"\n  ... and {len(items) - MAX_LISTED} more"
    return shown


def check_stream_arguments(batch_size, crop_size, start_index) -> None:
    """DatasetError for a batch size, crop or start position that no stream can take."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetError(f"batch_size must be a positive integer, got {batch_size!r}")
    if crop_size is not None and (not isinstance(crop_size, int) or crop_size < 1):
        raise DatasetError(f"crop_size must be a positive integer or None, got {crop_size!r}")
    if not isinstance(start_index, int) or start_index < 0:
        raise DatasetError(f"start_index must be a non-negative integer, got {start_index!r}")


# --------------------------------------------------------------------------------------------------
# Files: listing and header scan
# --------------------------------------------------------------------------------------------------


def natural_key(text: str):
    """Sort key that orders digit runs numerically: rain-2 < rain-10."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", text)]


def folder_path(source: str, *, usage: str) -> str:
    """The directory of ``'folder:/path'`` (or of a bare path), ``~`` expanded; an empty path raises a
    DatasetError suggesting `usage` (e.g. ``"'folder:/path/to/photos'"``)."""
    path = source[len(FOLDER_PREFIX):] if source.startswith(FOLDER_PREFIX) else source
    if not path:
        raise DatasetError(f"empty folder path: use {usage}")
    return os.path.expanduser(path)


def folder_images(directory: str) -> dict[str, str]:
    """Map file stem -> path for the image files directly inside `directory` (by extension, any
    case; other files are ignored). Two images with one stem raise a DatasetError naming them all."""
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
            + format_list(duplicates))
    return by_stem


@dataclass(frozen=True)
class ImageHeader:
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


def _cv2_imread(path: str):
    """OpenCV's reader at full bit depth (None on failure); imported lazily."""
    import cv2  # pylint: disable=import-outside-toplevel

    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


_HEAD_BYTES = 1 << 16  # enough for the size of PNG, GIF, BMP, WebP and most JPEG / TIFF headers


def read_header(path: str) -> ImageHeader:
    """Size/format of `path` from its header; `verify()` catches truncated or corrupt PNGs. An
    unreadable file, or one declaring more pixels than ``image_io.MAX_PIXELS`` (``--max_pixels``:
    "image too large: W x H", found before any pixel is decoded), raises a DatasetError naming it."""
    try:
        with open(path, "rb") as f:  # the size most headers declare in their first bytes, before Pillow
            image_io.check_declared_size(f.read(_HEAD_BYTES), path)
    except image_io.ImageTooLarge as e:
        raise DatasetError(str(e)) from None
    except OSError:
        pass  # named below
    try:
        with Image.open(path) as im:
            header = ImageHeader(path, im.width, im.height, im.format or "", im.mode)
            image_io.check_size(im.width, im.height, path)
            im.verify()
        return header
    except image_io.ImageTooLarge as e:
        raise DatasetError(str(e)) from None
    except Image.DecompressionBombError as e:  # a format whose size declared_size does not read
        raise DatasetError(f"{path}: image too large ({e})") from None
    except Exception as pil_error:  # PIL raises many types for bad files
        try:
            with open(path, "rb") as f:
                image_io.check_declared_size(f.read(), path)  # a bomb Pillow refused, or OpenCV's turn
        except image_io.ImageTooLarge as e:
            raise DatasetError(str(e)) from None
        except OSError:
            pass
        if path.lower().endswith((".tif", ".tiff")):  # e.g. 16-bit RGB TIFF that PIL cannot open
            image = _cv2_imread(path)
            if image is not None:
                return ImageHeader(path, image.shape[1], image.shape[0], "TIFF", "cv2")
        raise DatasetError(f"cannot read image {path}: {pil_error} (expected a readable "
                           f"PNG/JPEG/BMP/TIFF file)") from pil_error


def _safe_header(path: str):
    try:
        return read_header(path)
    except DatasetError as err:
        return err


def scan_headers(paths: Sequence[str]) -> dict[str, ImageHeader]:
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
        raise DatasetError(f"{len(problems)} unreadable image file(s):\n" + format_list(problems))
    return headers


# --------------------------------------------------------------------------------------------------
# Decoding (graph code)
# --------------------------------------------------------------------------------------------------


def fallback_decode(path: bytes | str) -> np.ndarray:
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


def decode_bytes(data: tf.Tensor) -> tf.Tensor:
    """Encoded PNG/JPEG/BMP/GIF bytes -> float32 [h, w, 3] in [0, 1] (8- and 16-bit, gray, RGBA)."""
    image = tf.io.decode_image(data, channels=3, dtype=tf.float32, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_file(path: tf.Tensor, native: tf.Tensor | bool) -> tf.Tensor:
    """Decode one file to float32 RGB [h, w, 3] in [0, 1]; `native` (a Python bool, or a bool tensor
    from `native_at`) selects `tf.io.decode_image` vs the OpenCV/PIL fallback."""

    def fallback():
        image = tf.numpy_function(fallback_decode, [path], tf.float32, stateful=False)
        image.set_shape([None, None, 3])
        return image

    if native is True:
        return decode_bytes(tf.io.read_file(path))
    if native is False:
        return fallback()
    return tf.cond(native, lambda: decode_bytes(tf.io.read_file(path)), fallback)


def native_table(flags) -> bool | tf.Tensor:
    """`ImageHeader.tf_native` of a list (or array) of files as the decoder table of `native_at`:
    plain True / False when every / no file is TF-decodable (which keeps the graph free of the other
    branch, the usual case), else a bool tensor of `flags`."""
    flags = np.asarray(flags, dtype=bool)
    if flags.all():
        return True
    if not flags.any():
        return False
    return tf.constant(flags)


def native_at(table, *index) -> bool | tf.Tensor:
    """The `decode_file` flag of the file at `index` of a `native_table`."""
    return table if isinstance(table, bool) else table[index if len(index) > 1 else index[0]]


def decode_map(data: tf.Tensor, channels: int = 1) -> tf.Tensor:
    """A PNG-encoded per-pixel map (segmentation, rain mask, ...) -> uint8 [h, w, channels]."""
    return tf.io.decode_png(data, channels=channels)


# --------------------------------------------------------------------------------------------------
# Keyed randomness, epochs and positions
# --------------------------------------------------------------------------------------------------


def op_seed(seed: int, stream: int, index: tf.Tensor) -> tf.Tensor:
    """A [2] int64 key for stateless random ops, distinct for every (seed, stream, index); `stream`
    is one of the ``STREAM_*`` ids. Streams added after the first ``NUM_STREAMS`` take negative first
    words (-1 - (seed * 16 + stream)), so that adding one changed no earlier stream's draws."""
    first = seed * NUM_STREAMS + stream if stream < NUM_STREAMS else -1 - (seed * 16 + stream)
    return tf.stack([tf.constant(first, tf.int64), tf.cast(index, tf.int64)])


@dataclass(frozen=True)
class Rows:
    """Rows ``first .. first + count - 1`` of every global batch of ``period`` examples: the positions
    ``p`` with ``first <= p % period < first + count`` (the examples of one worker's replicas)."""
    first: int
    count: int
    period: int

    def __post_init__(self):
        if not (0 <= self.first and 1 <= self.count and self.first + self.count <= self.period):
            raise DatasetError(f"rows {self.first}..{self.first + self.count - 1} are not rows of a global batch of "
                               f"{self.period}")

    def keeps(self, position):
        """True where ``position`` (an int64 tensor) is one of these rows."""
        row = position % self.period
        return tf.logical_and(row >= self.first, row < self.first + self.count)

    def check_start(self, start_index: int) -> None:
        if start_index % self.period:
            raise DatasetError(f"a sharded stream starts at a global batch: start_index={start_index} is not a "
                               f"multiple of {self.period}")


def training_positions(num_examples: int, start_index: int, epoch_fn, rows: Rows | None = None) -> tf.data.Dataset:
    """``(position, element)`` for positions start_index, start_index+1, ... of the epoch stream.

    `epoch_fn(epoch)` returns the dataset of one epoch (`num_examples` elements, cheap: indices or
    serialized records). The stream restarts at epoch ``start_index // N`` and skips the remainder,
    so nothing before `start_index` is read or decoded. ``rows``: only the positions of those rows
    of each global batch are kept (before the caller decodes anything).
    """
    start_epoch, offset = divmod(start_index, num_examples)
    ds = tf.data.Dataset.counter(start_epoch).flat_map(epoch_fn)
    ds = ds.skip(offset).enumerate(start=start_index)
    if rows is not None:
        rows.check_start(start_index)
        ds = ds.filter(lambda position, element: rows.keeps(position))
    return ds


def permuted_epochs(num: int, seed: int) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """The `training_positions` epoch function of a full stateless permutation of ``range(num)``
    per epoch, keyed on (seed, epoch): every index exactly once per epoch."""

    def epoch_indices(epoch):
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(num, dtype=tf.int64), seed=op_seed(seed, STREAM_SHUFFLE, epoch))
        return tf.data.Dataset.from_tensor_slices(perm)

    return epoch_indices


def seeded_shuffle(ds: tf.data.Dataset, buffer_size: int, seed: int, epoch: tf.Tensor) -> tf.data.Dataset:
    """`ds.shuffle` with a seed derived from (seed, epoch) only. Call inside a dataset function.

    `Dataset.shuffle` pairs its op seed with the graph's global seed (`tf.random.set_seed`); clearing
    the seed of the function graph being traced makes the order depend on (seed, epoch) alone.
    """
    tf.compat.v1.get_default_graph().seed = None
    key = tf.random.stateless_uniform([], seed=op_seed(seed, STREAM_SHUFFLE, epoch),
                                      minval=None, maxval=None, dtype=tf.int64)
    return ds.shuffle(buffer_size, seed=key, reshuffle_each_iteration=False)


# --------------------------------------------------------------------------------------------------
# Augmentation (graph code)
# --------------------------------------------------------------------------------------------------


def crop_flip(stack, position, *, seed: int, crop_size: int | None, flip: bool):
    """Stateless random crop and flip of an ``[h, w, c]`` stack (images concatenated on channels so
    that they share the window), keyed on (seed, position). The window does not depend on ``c``."""
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(op_seed(seed, STREAM_AUGMENT, position), 2))
    if crop_size is not None:
        stack = tf.image.stateless_random_crop(stack, [crop_size, crop_size, stack.shape[-1]], seed=crop_seed)
    if flip:
        stack = tf.image.stateless_random_flip_left_right(stack, seed=flip_seed)
    return stack


def _split_channels(stack, widths):
    parts, start = [], 0
    for width in widths:
        parts.append(stack[..., start:start + width])
        start += width
    return parts


def random_crop_flip(images: Sequence[tf.Tensor], position, *, seed: int, crop_size: int | None, flip: bool,
                     maps: Sequence[tf.Tensor] = (), scale_rotate: bool = False,
                     min_scale: float = 0.5) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """The same stateless random crop and flip for every float image ``[h, w, c]`` of `images` and
    every per-pixel map (integer ``[h, w, c]``, e.g. uint8 class ids) of `maps`, keyed on
    (seed, position). Returns ``(images, maps)`` cut alike, the maps in their own dtype.

    ``scale_rotate`` (the augmentation of Xu et al., "Intensity-Aware Single-Image Deraining with
    Semantic and Color Regularization", IEEE TIP 2021, Section III.D: "scaling, cropping, flipping
    and rotation") first resizes by a factor drawn in [min_scale, 1] (bilinear and antialiased for
    the images, nearest for the maps; never below the crop) and rotates the crop by 0 or 180 degrees
    at random: a half turn keeps the direction of every line, so near-vertical rain streaks stay
    near-vertical (a quarter turn would make them horizontal, unlike any rain the paper synthesises:
    0, +-15, +-30, +-40 degrees from vertical)."""
    images, maps = list(images), list(maps)
    if scale_rotate:
        scale_seed, rot_seed = tf.unstack(
            tf.random.experimental.stateless_split(op_seed(seed, STREAM_GEOMETRY, position), 2))
        size = tf.cast(tf.shape(images[0])[:2], tf.float32)
        lowest = float(min_scale)
        if crop_size is not None:  # never scale below the crop
            lowest = tf.maximum(lowest, crop_size / tf.reduce_min(size))
        factor = tf.random.stateless_uniform([], scale_seed, minval=0.0, maxval=1.0)
        factor = lowest + (1.0 - lowest) * factor
        new = tf.cast(tf.math.ceil(size * factor), tf.int32)
        images = [tf.image.resize(image, new, method="bilinear", antialias=True) for image in images]
        maps = [tf.image.resize(m, new, method="nearest") for m in maps]
    dtypes = [m.dtype for m in maps]
    parts = images + [tf.cast(m, tf.float32) for m in maps]
    widths = [int(p.shape[-1]) for p in parts]
    stack = crop_flip(tf.concat(parts, axis=-1), position, seed=seed, crop_size=crop_size, flip=flip)  # one for all
    if scale_rotate:
        k = 2 * tf.random.stateless_uniform([], rot_seed, minval=0, maxval=2, dtype=tf.int32)  # 0 or 180 deg
        stack = tf.image.rot90(stack, k)
    parts = _split_channels(stack, widths)
    cut_maps = [tf.cast(tf.round(p), dtype) for p, dtype in zip(parts[len(images):], dtypes)]
    return parts[:len(images)], cut_maps


def center_crop(image: tf.Tensor, crop_size: int) -> tf.Tensor:
    """The central ``crop_size`` square (the top-left of the two middles for odd margins)."""
    shape = tf.shape(image)
    top, left = (shape[0] - crop_size) // 2, (shape[1] - crop_size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, crop_size, crop_size)


def ten_crop(parts: Sequence[tf.Tensor], k, crop_size: int) -> list[tf.Tensor]:
    """Crop ``k`` (0..9) of the ten-crop scheme (MENET: Fan, Chen & Li, "Multi-Task Learning Enhanced
    Single Image De-Raining"), the same window for every ``[h, w, c]`` tensor of `parts`
    (images, or maps in any dtype): k % 5 = top-left, top-right, bottom-left, bottom-right, centre;
    k >= 5 on the horizontally mirrored image. The centre crop starts at ``round(d / 2)`` for the
    margin ``d``, rounded half to even as Python's ``round`` in the authors' ``FiveCrop.center_crop``
    (SumiHui/MENET ``heavy/utils/transforms.py``)."""
    parts = list(parts)
    dtypes = [p.dtype for p in parts]
    widths = [int(p.shape[-1]) for p in parts]
    floats = [p if p.dtype == tf.float32 else tf.cast(p, tf.float32) for p in parts]
    stack = tf.concat(floats, axis=-1)
    stack = tf.cond(k >= 5, lambda: tf.image.flip_left_right(stack), lambda: stack)
    shape = tf.shape(stack)
    dh, dw = shape[0] - crop_size, shape[1] - crop_size
    corner = tf.cast(k % 5, tf.int32)

    def half_to_even(d):  # round(d / 2) with halves to the even integer: 7/2 -> 4, 5/2 -> 2
        q = d // 2
        return q + (d % 2) * (q % 2)

    top = tf.gather(tf.stack([0, 0, dh, dh, half_to_even(dh)]), corner)
    left = tf.gather(tf.stack([0, dw, 0, dw, half_to_even(dw)]), corner)
    stack = tf.image.crop_to_bounding_box(stack, top, left, crop_size, crop_size)
    return [p if dtype == tf.float32 else tf.cast(tf.round(p), dtype)
            for p, dtype in zip(_split_channels(stack, widths), dtypes)]


# --------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------


def finish(ds: tf.data.Dataset, *, training: bool, batch_size: int, rows: Rows | None = None) -> tf.data.Dataset:
    """Batch and prefetch. Training streams never end and drop the remainder (static batch shapes);
    evaluation keeps a last partial batch. ``rows`` (a training stream of `training_positions` with
    the same rows): batches of ``rows.count``, the rows of each global batch of ``batch_size``."""
    if rows is not None:
        if not training or rows.period != batch_size:
            raise DatasetError(f"rows of a global batch of {rows.period} are for a training stream of that batch size "
                               f"(got batch_size={batch_size}, training={training})")
        batch_size = rows.count
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------------------
# TFDS records
# --------------------------------------------------------------------------------------------------


def _unknown_dataset_message(dataset) -> str:
    return (f"unknown dataset {dataset!r}: TFDS has no builder of that name registered. The erl_derain "
            f"datasets are registered by importing {CATALOG_MODULE} (the `erl-derain` command does; "
            f"{CATALOG_MODULE}.available_builders() lists them, {CATALOG_MODULE}.load_builder(name) "
            f"resolves one); or pass a tfds.core.DatasetBuilder, or a folder of pairs '{FOLDER_PREFIX}/path' "
            f"with rainy/ and clean/ sub-folders (any other TFDS dataset with 'rainy' and 'clean' image "
            f"features works too)")


def check_data_dir(data_dir: str | None) -> None:
    """A DatasetError when TFDS cannot use ``data_dir``: TFDS reaches its folders through etils.epath,
    which knows local paths and a few file-system URLs (``gs://``, read with ``tf.io.gfile``); it
    refuses the others (``ram://``, ``hdfs://``) before anything is read."""
    if not data_dir or "://" not in data_dir:
        return
    from etils import epath  # pylint: disable=import-outside-toplevel  (TFDS's path library)

    try:
        epath.Path(data_dir)
    except (KeyError, NotImplementedError, ValueError):
        scheme = data_dir.split("://", 1)[0]
        raise DatasetError(f"--data_dir={data_dir}: TFDS cannot use a {scheme}:// folder (its path library, "
                           f"etils.epath, does not know {scheme}://); use a local folder or gs://") from None


def tfds_builder(dataset, data_dir: str | None = None):
    """The TFDS builder of `dataset`, not prepared: a ``tfds.core.DatasetBuilder`` is returned as is;
    a name (``'name'``, ``'name/config'``) must be one that TFDS already knows. A name TFDS does not
    know raises `UnknownDatasetError` (pointing to the catalog `CATALOG_MODULE`); a bad config or
    version a DatasetError."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    if isinstance(dataset, tfds.core.DatasetBuilder):  # e.g. a builder made with a custom config
        return dataset
    check_data_dir(data_dir)
    try:
        return tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise UnknownDatasetError(_unknown_dataset_message(dataset)) from err
    except ValueError as err:  # e.g. an unknown config or version
        raise DatasetError(f"cannot load TFDS dataset {dataset!r}: {err}") from err


def resolve_builder(dataset, data_dir: str | None = None):
    """`tfds_builder(dataset, data_dir)`, not prepared. The data layer never imports the catalog
    (`CATALOG_MODULE`): an entry point imports it, which registers the erl_derain builders; once it is
    imported, an unknown name raises its DatasetError listing the erl_derain datasets."""
    try:
        return tfds_builder(dataset, data_dir)
    except UnknownDatasetError:
        catalog = sys.modules.get(CATALOG_MODULE)
        if catalog is None:
            raise
        return catalog.load_builder(dataset, data_dir)  # its error lists the erl_derain datasets


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


def prepared_builder(dataset, data_dir: str | None = None, manual_dir: str | None = None):
    """`tfds_builder(dataset)`, prepared on first use (from `manual_dir` for the benchmarks that
    cannot be downloaded); every failure becomes a DatasetError naming the dataset."""
    builder = resolve_builder(dataset, data_dir)
    if not builder.is_prepared():
        prepare(builder, manual_dir=manual_dir)
    return builder


def require_features(builder, keys: Sequence[str], purpose: str) -> None:
    """DatasetError naming the missing ones of `keys` and the dataset's features; `purpose` ends the
    message (e.g. ``"paired pipelines need 'rainy' and 'clean' images"``)."""
    features = builder.info.features
    missing = [k for k in keys if k not in features]
    if missing:
        raise DatasetError(f"TFDS dataset {builder.name!r} has no {' / '.join(missing)} feature "
                           f"(features: {sorted(features.keys())}); {purpose}")


def feature_kinds(builder, exclude: Sequence[str] = ("rainy", "clean", "name")) -> dict[str, str]:
    """``{feature: MAP or VALUE}`` for the features of a TFDS builder other than `exclude`: `MAP` for
    an Image feature (a per-pixel map, decoded by `decode_map` and cut with the images), `VALUE` for
    anything else (passed through as the dataset stores it)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    features = builder.info.features
    return {k: MAP if isinstance(features[k], tfds.features.Image) else VALUE
            for k in features.keys() if k not in exclude}


def split_size(builder, split: str, *, estimate_sub_splits: bool = True) -> tuple[int, int]:
    """(examples, serialized bytes) of a split; a split the dataset lacks raises a DatasetError listing
    them. Sub-splits (``'train[:90%]'``) carry no size: with `estimate_sub_splits` it is estimated
    from the average record, else 0 (never cached in memory)."""
    try:
        info = builder.info.splits[split]
    except (KeyError, ValueError) as err:
        raise DatasetError(f"TFDS dataset {builder.name!r} has no split {split!r} "
                           f"(available: {sorted(builder.info.splits.keys())})") from err
    num, num_bytes = int(info.num_examples), int(info.num_bytes or 0)
    if not num_bytes and estimate_sub_splits:
        total = sum(int(s.num_examples) for s in builder.info.splits.values())
        num_bytes = int(int(builder.info.dataset_size or 0) * num / total) if total else 0
    return num, num_bytes


def tfds_records(builder, split: str, keys: Sequence[str]) -> tf.data.Dataset:
    """The serialized (undecoded) records of a split in file order, as dicts of `keys` plus
    ``'name'`` (the dataset's ``name`` feature, or ``'<split>-<index>'`` when it has none). Undecoded
    records are cheap to cache, shuffle and skip; decode them with `decode_bytes` / `decode_map`."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    features = builder.info.features
    decoders = {key: tfds.decode.SkipDecoding() for key in features.keys()}
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                            read_config=tfds.ReadConfig(try_autocache=False))
    has_name = "name" in features
    keys = [k for k in keys if k != "name"]

    def select(index, example):
        name = example["name"] if has_name else tf.strings.join([split, tf.strings.as_string(index)], "-")
        return {**{k: example[k] for k in keys}, "name": name}

    return ds.enumerate().map(select)


def fits_in_memory(num_bytes: int, cache_limit_bytes: int | None) -> bool:
    """True for a split whose (known, non-zero) serialized size is within `cache_limit_bytes` (None:
    `DEFAULT_CACHE_LIMIT_BYTES`)."""
    limit = DEFAULT_CACHE_LIMIT_BYTES if cache_limit_bytes is None else cache_limit_bytes
    return 0 < num_bytes <= limit


def cache_or_buffer(records: tf.data.Dataset, num: int, num_bytes: int, *, cache_limit_bytes: int | None,
                    shuffle_buffer: int) -> tuple[tf.data.Dataset, int]:
    """(records, shuffle buffer) of a training stream: a split that `fits_in_memory` is cached and
    shuffled with a buffer of all ``num`` records (a full permutation per epoch); a larger one
    streams through ``shuffle_buffer`` records."""
    if fits_in_memory(num_bytes, cache_limit_bytes):
        return records.cache(), num
    return records, max(1, min(shuffle_buffer, num))


def excluded_examples(builder, split: str, exclude: dict, *, dataset: str | None = None) -> np.ndarray:
    """Boolean mask over the examples of a TFDS split, in file order (the order of `tfds_records`):
    True for an example whose scalar feature ``key`` equals one of ``exclude[key]`` (numbers compared
    to 1e-4), for any key. Reads only those features (one pass over the split). A key the dataset does
    not have raises a DatasetError naming it and the dataset's features."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    name = dataset or builder.name
    features = builder.info.features
    missing = [k for k in exclude if k not in features]
    if missing:
        raise DatasetError(f"cannot exclude examples by {' / '.join(map(repr, missing))}: TFDS dataset {name!r} "
                           f"has no such feature (features: {sorted(features.keys())})")
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=tfds.decode.PartialDecoding({k: True for k in exclude}),
                            read_config=tfds.ReadConfig(try_autocache=False))
    columns: dict[str, list] = {k: [] for k in exclude}
    for batch in ds.batch(4096).as_numpy_iterator():
        for k in exclude:
            columns[k].append(np.asarray(batch[k]).reshape(-1))
    mask = None
    for k, values in exclude.items():
        column = np.concatenate(columns[k]) if columns[k] else np.zeros([0])
        if column.dtype.kind in "fiub":
            hit = np.zeros(column.shape, bool)
            for v in values:
                hit |= np.abs(column.astype(np.float64) - float(v)) < 1e-4
        else:
            hit = np.isin(column, [v.encode() if isinstance(v, str) else v for v in values])
        mask = hit if mask is None else mask | hit
    return mask


def exclude_records(records: tf.data.Dataset, num_bytes: int, mask: np.ndarray,
                    what: str) -> tuple[tf.data.Dataset, int, int]:
    """`tfds_records` without the examples `mask` marks (from `excluded_examples`), their count and
    (estimated) size; `what` describes the exclusion in the error when nothing is left."""
    keep = tf.constant(~mask)
    kept = int(np.sum(~mask))
    if kept == 0:
        raise DatasetError(f"excluding {what} leaves no examples (all {mask.size} are excluded)")

    def kept_example(i, record):
        del record
        return keep[i]

    def without_index(i, record):
        del i
        return record

    records = records.enumerate().filter(kept_example).map(without_index)
    return records, kept, int(num_bytes * kept / max(1, mask.size))
