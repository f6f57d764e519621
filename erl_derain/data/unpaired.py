"""Unpaired real-rain `tf.data` pipelines (JRGR's real rainy images) and the zip with a paired stream.

:func:`unpaired_dataset` yields ``{'rainy': float32 [B, c, c, 3] in [0, 1], 'name': tf.string [B]}``:
random crops of real rainy photographs, from

* a TFDS dataset with a ``rainy`` image feature: a ``tfds.core.DatasetBuilder`` or a name TFDS knows
  (``real_rain`` once the catalog :mod:`erl_derain.datasets` is imported, any ``name/config``;
  ``name`` is used when the dataset has it), prepared on first use as
  :func:`erl_derain.data.pipelines.paired_dataset` does (``data_dir``, ``manual_dir``);
* a folder: ``'folder:/path'`` or a path to an existing directory: every image directly inside it
  (PNG/JPEG/BMP/TIFF...; ``/path/<split>/`` is used when it exists, and ``/path/rainy/`` when the
  folder holds no image itself). Files are checked up front (headers); an unreadable one is named.

Built from the public primitives of :mod:`erl_derain.data.streams`, as the paired streams are.
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

from erl_derain.data import streams as st
from erl_derain.data.streams import FOLDER_PREFIX, IMAGE_EXTENSIONS, DatasetError

__all__ = ["SMALL_IMAGE_MODES", "list_unpaired_folder", "unpaired_dataset", "zipped"]

SMALL_IMAGE_MODES = ("upscale", "error")
_SEED_OFFSET = 7_919_001  # unpaired streams' keys: (seed + offset); see the module docstring


def _is_folder(source) -> bool:
    return isinstance(source, str) and (source.startswith(FOLDER_PREFIX) or os.path.isdir(os.path.expanduser(source)))


def list_unpaired_folder(source: str, split: str | None = None) -> list[tuple[str, str]]:
    """``[(path, name), ...]`` of the images of an unpaired folder, in natural file-name order."""
    root = st.folder_path(source, usage=f"'{FOLDER_PREFIX}/path/to/photos'")
    if not os.path.isdir(root):
        raise DatasetError(f"real-rain folder {root!r} does not exist (expected a directory of rainy photos)")
    if split and os.path.isdir(os.path.join(root, split)):
        root = os.path.join(root, split)
    images = st.folder_images(root)
    if not images and os.path.isdir(os.path.join(root, "rainy")):
        root = os.path.join(root, "rainy")
        images = st.folder_images(root)
    if not images:
        exts = "|".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise DatasetError(f"no images in real-rain folder {root}: expected files ending in {exts}")
    return [(images[s], s) for s in sorted(images, key=st.natural_key)]


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


def _folder_pipeline(source, split, *, batch_size, crop_size, training, seed, start_index, flip, small_images,
                     rows=None):
    files = list_unpaired_folder(source, split)
    headers = st.scan_headers([p for p, _ in files])
    if crop_size is not None and small_images == "error":
        small = [f"{p} is {headers[p].width}x{headers[p].height} (WxH)" for p, _ in files
                 if min(headers[p].width, headers[p].height) < crop_size]
        if small:
            raise DatasetError(f"{len(small)} real rainy image(s) smaller than the {crop_size}x{crop_size} crop "
                               f"(use a smaller crop, drop them, or small_images='upscale'):\n"
                               + st.format_list(small))
    if crop_size is None and batch_size > 1 and len({(headers[p].width, headers[p].height) for p, _ in files}) > 1:
        raise DatasetError(f"batch_size={batch_size} without crop_size needs images of one size in {source}")
    num = len(files)
    paths = tf.constant([p for p, _ in files])
    names = tf.constant([n for _, n in files])
    native = st.native_table([headers[p].tf_native for p, _ in files])

    def read(index):
        return st.decode_file(paths[index], st.native_at(native, index)), names[index]

    if training:
        def load(position, index):
            image, name = read(index)
            image = _fit_to_crop(image, crop_size, small_images, name, source)
            return {"rainy": st.crop_flip(image, position, seed=seed, crop_size=crop_size, flip=flip),
                    "name": name}

        ds = st.training_positions(num, start_index, st.permuted_epochs(num, seed), rows)
    else:
        def load(index):
            image, name = read(index)
            if crop_size is not None:
                image = _fit_to_crop(image, crop_size, small_images, name, source)
                image = st.center_crop(image, crop_size)
            return {"rainy": image, "name": name}

        ds = tf.data.Dataset.range(start_index, num)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return st.finish(ds, training=training, batch_size=batch_size, rows=rows)


def _tfds_pipeline(source, split, *, batch_size, crop_size, training, seed, start_index, flip, small_images,
                   data_dir, manual_dir, shuffle_buffer, cache_limit_bytes, rows=None):
    builder = st.prepared_builder(source, data_dir, manual_dir)
    st.require_features(builder, ("rainy",), "the real-rain pipeline needs 'rainy' images")
    # Sub-splits carry no size and are not estimated here: they stream through the shuffle buffer.
    num, num_bytes = st.split_size(builder, split, estimate_sub_splits=False)
    if num == 0:
        raise DatasetError(f"TFDS dataset {builder.name!r} split {split!r} has no examples")
    records = st.tfds_records(builder, split, ("rainy",))

    def decode(record):
        image = st.decode_bytes(record["rainy"])
        return _fit_to_crop(image, crop_size, small_images, record["name"], str(source)), record["name"]

    if training:
        records, buffer = st.cache_or_buffer(records, num, num_bytes, cache_limit_bytes=cache_limit_bytes,
                                             shuffle_buffer=shuffle_buffer)
        ds = st.training_positions(num, start_index, lambda epoch: st.seeded_shuffle(records, buffer, seed, epoch),
                                   rows)

        def load(position, record):
            image, name = decode(record)
            return {"rainy": st.crop_flip(image, position, seed=seed, crop_size=crop_size, flip=flip),
                    "name": name}
    else:
        ds = records.skip(start_index)

        def load(record):
            image, name = decode(record)
            if crop_size is not None:
                image = st.center_crop(image, crop_size)
            return {"rainy": image, "name": name}
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return st.finish(ds, training=training, batch_size=batch_size, rows=rows)


def unpaired_dataset(source: str, split: str = "train", *, batch_size: int = 1, crop_size: int | None = None,
                     seed: int = 0, start_index: int = 0, flip: bool = True, training: bool = True,
                     data_dir: str | None = None, manual_dir: str | None = None, small_images: str = "upscale",
                     shuffle_buffer: int = 256, cache_limit_bytes: int | None = None,
                     rows: st.Rows | None = None) -> tf.data.Dataset:
    """Batches ``{'rainy': float32 [B, c, c, 3] in [0, 1], 'name': tf.string [B]}`` of real rainy crops.

    Args:
      source: a ``tfds.core.DatasetBuilder`` or a TFDS name with a ``rainy`` feature (``'real_rain'``, once
        :mod:`erl_derain.datasets` is imported), ``'folder:/path'`` or a directory.
      split: TFDS split, or the sub-folder ``<path>/<split>`` when it exists.
      batch_size, crop_size, seed, start_index, flip, training: as ``paired_dataset`` (training: an
        endless stream of random crops and flips, full batches; else one pass, centre crops).
      small_images: ``'upscale'`` (default) or ``'error'`` for images smaller than the crop.
      rows: a training stream's shard, as ``paired_dataset``.

    Raises:
      DatasetError: bad arguments, an unknown dataset, or a bad folder/file (named in the message).
    """
    st.check_stream_arguments(batch_size, crop_size, start_index)
    if small_images not in SMALL_IMAGE_MODES:
        raise DatasetError(f"small_images must be one of {SMALL_IMAGE_MODES}, got {small_images!r}")
    if not source:
        raise DatasetError(f"the real-rain source must be a TFDS name, '{FOLDER_PREFIX}/path' or a directory")
    kwargs = dict(batch_size=batch_size, crop_size=crop_size, training=training, seed=int(seed) + _SEED_OFFSET,
                  start_index=start_index, flip=bool(flip) and training, small_images=small_images, rows=rows)
    if rows is not None and not training:
        raise DatasetError("rows (a worker's shard) are for training streams")
    if _is_folder(source):
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
