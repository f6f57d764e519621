"""Unpaired real-rain `tf.data` pipelines (JRGR's real rainy images) and the zip with a paired stream.

:func:`unpaired_dataset` yields ``{'rainy': float32 [B, c, c, 3] in [0, 1], 'name': tf.string [B]}``:
random crops of real rainy photographs, from

* a TFDS dataset with a ``rainy`` image feature (``real_rain``, any ``name/config``; ``name`` is used
  when the dataset has it), prepared on first use as :func:`erl_derain.data.pipelines.paired_dataset`
  does (``data_dir``, ``manual_dir``);
* a folder: ``'folder:/path'`` or a path to an existing directory: every image directly inside it
  (PNG/JPEG/BMP/TIFF...; ``/path/<split>/`` is used when it exists, and ``/path/rainy/`` when the
  folder holds no image itself). Files are checked up front (headers); an unreadable one is named.

Determinism and resumption follow ``paired_dataset``: the stream is a pure function of
``(seed, position)`` (a stateless permutation per epoch, a stateless crop/flip per position) and
``start_index=k`` yields exactly what an uninterrupted stream yields from position ``k`` on. The keys
are derived from ``seed`` with an offset, so a paired and an unpaired stream built with the same
seed are not in lock-step (otherwise synthetic image i would always meet real image i).

Images smaller than the crop: ``small_images="upscale"`` (default) resizes them (bilinear,
antialiased, aspect kept) so that the shorter side equals the crop, a real photo being worth using
even when small; ``small_images="error"`` rejects them instead, naming every such file (folders, up
front) or the example (TFDS, when it is read).

:func:`zipped` combines a paired and an unpaired batched stream into ``{'rainy', 'clean', 'real',
'name', 'real_name'}`` (plus whatever else the paired stream carries).
"""

from __future__ import annotations

import os

import tensorflow as tf

from erl_derain.data import pipelines as pl
from erl_derain.data.pipelines import FOLDER_PREFIX, DatasetError

__all__ = ["SMALL_IMAGE_MODES", "list_unpaired_folder", "unpaired_dataset", "zipped"]

SMALL_IMAGE_MODES = ("upscale", "error")
_SEED_OFFSET = 7_919_001  # unpaired streams' keys: (seed + offset); see the module docstring


def _is_folder(source: str) -> bool:
    return source.startswith(FOLDER_PREFIX) or os.path.isdir(os.path.expanduser(source))


def list_unpaired_folder(source: str, split: str | None = None) -> list[tuple[str, str]]:
    """``[(path, name), ...]`` of the images of an unpaired folder, in natural file-name order."""
    root = os.path.expanduser(source[len(FOLDER_PREFIX):] if source.startswith(FOLDER_PREFIX) else source)
    if not root:
        raise DatasetError(f"empty folder path: use '{FOLDER_PREFIX}/path/to/photos'")
    if not os.path.isdir(root):
        raise DatasetError(f"real-rain folder {root!r} does not exist (expected a directory of rainy photos)")
    if split and os.path.isdir(os.path.join(root, split)):
        root = os.path.join(root, split)
    images = pl._list_images(root)  # pylint: disable=protected-access
    if not images and os.path.isdir(os.path.join(root, "rainy")):
        root = os.path.join(root, "rainy")
        images = pl._list_images(root)  # pylint: disable=protected-access
    if not images:
        exts = "|".join(e.lstrip(".") for e in pl.IMAGE_EXTENSIONS)
        raise DatasetError(f"no images in real-rain folder {root}: expected files ending in {exts}")
    return [(images[s], s) for s in sorted(images, key=pl._natural_key)]  # pylint: disable=protected-access


def _fit_to_crop(image, crop_size: int | None, small_images: str, name, source: str):
    """Upscale (aspect kept) an image whose shorter side is below the crop, or assert it is not."""
    if crop_size is None:
        return image
    shape = tf.shape(image)
    short = tf.minimum(shape[0], shape[1])
    if small_images == "error":
        check = tf.debugging.Assert(short >= crop_size, [
            f"{source}: real rainy image smaller than the {crop_size}x{crop_size} crop; example", name,
            "height", shape[0], "width", shape[1]])
        with tf.control_dependencies([check]):
            return tf.identity(image)

    def upscale():
        scale = crop_size / tf.cast(short, tf.float32)
        size = tf.cast(tf.math.ceil(tf.cast(shape[:2], tf.float32) * scale), tf.int32)
        size = tf.maximum(size, crop_size)
        return tf.clip_by_value(tf.image.resize(image, size, method="bilinear", antialias=True), 0.0, 1.0)

    return tf.cond(short < crop_size, upscale, lambda: image)


def _folder_pipeline(source, split, *, batch_size, crop_size, training, seed, start_index, flip, small_images):
    files = list_unpaired_folder(source, split)
    headers = pl._scan_headers([p for p, _ in files])  # pylint: disable=protected-access
    if crop_size is not None and small_images == "error":
        small = [f"{p} is {headers[p].width}x{headers[p].height} (WxH)" for p, _ in files
                 if min(headers[p].width, headers[p].height) < crop_size]
        if small:
            raise DatasetError(f"{len(small)} real rainy image(s) smaller than the {crop_size}x{crop_size} crop "
                               f"(use a smaller crop, drop them, or small_images='upscale'):\n"
                               + pl._format_list(small))  # pylint: disable=protected-access
    if crop_size is None and batch_size > 1 and len({(headers[p].width, headers[p].height) for p, _ in files}) > 1:
        raise DatasetError(f"batch_size={batch_size} without crop_size needs images of one size in {source}")
    num = len(files)
    paths = tf.constant([p for p, _ in files])
    names = tf.constant([n for _, n in files])
    native = [headers[p].tf_native for p, _ in files]
    native_table = True if all(native) else (False if not any(native) else tf.constant(native))

    def read(index):
        flag = native_table if isinstance(native_table, bool) else native_table[index]
        return pl._decode_file(paths[index], flag), names[index]  # pylint: disable=protected-access

    if training:
        def epoch_indices(epoch):
            perm = tf.random.experimental.stateless_shuffle(
                tf.range(num, dtype=tf.int64),
                seed=pl._op_seed(seed, pl._STREAM_SHUFFLE, epoch))  # pylint: disable=protected-access
            return tf.data.Dataset.from_tensor_slices(perm)

        def load(position, index):
            image, name = read(index)
            image = _fit_to_crop(image, crop_size, small_images, name, source)
            return {"rainy": pl.crop_flip(image, position, seed=seed, crop_size=crop_size, flip=flip),
                    "name": name}

        ds = pl._training_positions(num, start_index, epoch_indices)  # pylint: disable=protected-access
    else:
        def load(index):
            image, name = read(index)
            if crop_size is not None:
                image = _fit_to_crop(image, crop_size, small_images, name, source)
                image = pl._center_crop(image, crop_size)  # pylint: disable=protected-access
            return {"rainy": image, "name": name}

        ds = tf.data.Dataset.range(start_index, num)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return pl._finish(ds, training=training, batch_size=batch_size)  # pylint: disable=protected-access


def _tfds_pipeline(source, split, *, batch_size, crop_size, training, seed, start_index, flip, small_images,
                   data_dir, manual_dir, shuffle_buffer, cache_limit_bytes):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    builder = pl._tfds_builder(source, data_dir, manual_dir)  # pylint: disable=protected-access
    features = builder.info.features
    if "rainy" not in features:
        raise DatasetError(f"TFDS dataset {builder.name!r} has no 'rainy' feature (features: "
                           f"{sorted(features.keys())}); the real-rain pipeline needs 'rainy' images")
    try:
        info = builder.info.splits[split]
    except (KeyError, ValueError) as err:
        raise DatasetError(f"TFDS dataset {builder.name!r} has no split {split!r} "
                           f"(available: {sorted(builder.info.splits.keys())})") from err
    num, num_bytes = int(info.num_examples), int(info.num_bytes or 0)
    if num == 0:
        raise DatasetError(f"TFDS dataset {builder.name!r} split {split!r} has no examples")
    decoders = {k: tfds.decode.SkipDecoding() for k in features.keys()}
    records = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                                 read_config=tfds.ReadConfig(try_autocache=False))
    has_name = "name" in features
    records = records.enumerate().map(lambda i, ex: (
        ex["rainy"], ex["name"] if has_name else tf.strings.join([split, tf.strings.as_string(i)], "-")))

    def decode(rainy_bytes, name):
        image = pl._decode_bytes(rainy_bytes)  # pylint: disable=protected-access
        return _fit_to_crop(image, crop_size, small_images, name, str(source)), name

    if training:
        limit = pl.DEFAULT_CACHE_LIMIT_BYTES if cache_limit_bytes is None else cache_limit_bytes
        if 0 < num_bytes <= limit:
            records, buffer = records.cache(), num
        else:
            buffer = max(1, min(shuffle_buffer, num))
        def epoch_records(epoch):
            return pl._seeded_shuffle(records, buffer, seed, epoch)  # pylint: disable=protected-access

        ds = pl._training_positions(num, start_index, epoch_records)  # pylint: disable=protected-access

        def load(position, record):
            image, name = decode(*record)
            return {"rainy": pl.crop_flip(image, position, seed=seed, crop_size=crop_size, flip=flip),
                    "name": name}
    else:
        ds = records.skip(start_index)

        def load(rainy_bytes, name):
            image, name = decode(rainy_bytes, name)
            if crop_size is not None:
                image = pl._center_crop(image, crop_size)  # pylint: disable=protected-access
            return {"rainy": image, "name": name}
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return pl._finish(ds, training=training, batch_size=batch_size)  # pylint: disable=protected-access


def unpaired_dataset(source: str, split: str = "train", *, batch_size: int = 1, crop_size: int | None = None,
                     seed: int = 0, start_index: int = 0, flip: bool = True, training: bool = True,
                     data_dir: str | None = None, manual_dir: str | None = None, small_images: str = "upscale",
                     shuffle_buffer: int = 256, cache_limit_bytes: int | None = None) -> tf.data.Dataset:
    """Batches ``{'rainy': float32 [B, c, c, 3] in [0, 1], 'name': tf.string [B]}`` of real rainy crops.

    Args:
      source: a TFDS name with a ``rainy`` feature (``'real_rain'``), ``'folder:/path'`` or a directory.
      split: TFDS split, or the sub-folder ``<path>/<split>`` when it exists.
      batch_size, crop_size, seed, start_index, flip, training: as ``paired_dataset`` (training: an
        endless stream of random crops and flips, full batches; else one pass, centre crops).
      small_images: ``'upscale'`` (default) or ``'error'`` for images smaller than the crop.

    Raises:
      DatasetError: bad arguments, an unknown dataset, or a bad folder/file (named in the message).
    """
    pl.check_stream_arguments(batch_size, crop_size, start_index)
    if small_images not in SMALL_IMAGE_MODES:
        raise DatasetError(f"small_images must be one of {SMALL_IMAGE_MODES}, got {small_images!r}")
    if not source:
        raise DatasetError(f"the real-rain source must be a TFDS name, '{FOLDER_PREFIX}/path' or a directory")
    kwargs = dict(batch_size=batch_size, crop_size=crop_size, training=training, seed=int(seed) + _SEED_OFFSET,
                  start_index=start_index, flip=bool(flip) and training, small_images=small_images)
    if isinstance(source, str) and _is_folder(source):
        return _folder_pipeline(source, split, **kwargs)
    return _tfds_pipeline(source, split, data_dir=data_dir, manual_dir=manual_dir, shuffle_buffer=shuffle_buffer,
                          cache_limit_bytes=cache_limit_bytes, **kwargs)


def zipped(paired: tf.data.Dataset, unpaired: tf.data.Dataset) -> tf.data.Dataset:
    """Zip a batched paired stream with a batched unpaired one: every paired batch gets ``'real'``
    (the unpaired ``rainy`` crops) and ``'real_name'``. Both must have the same batch size; the result
    ends with the shorter stream (training streams are endless)."""
    p_spec, u_spec = paired.element_spec, unpaired.element_spec
    for key, spec in (("rainy", p_spec), ("rainy", u_spec)):
        if key not in spec:
            raise DatasetError(f"zipped() needs batches with {key!r}, got keys {sorted(spec)}")
    pb, ub = p_spec["rainy"].shape[0], u_spec["rainy"].shape[0]
    if pb is not None and ub is not None and pb != ub:
        raise DatasetError(f"the paired batches hold {pb} examples but the real-rain batches {ub}: use one batch_size")

    def merge(p, u):
        out = dict(p)
        out["real"] = u["rainy"]
        out["real_name"] = u["name"]
        return out

    return tf.data.Dataset.zip((paired, unpaired)).map(merge, num_parallel_calls=tf.data.AUTOTUNE,
                                                        deterministic=True)
