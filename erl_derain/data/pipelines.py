"""Paired (rainy, clean) `tf.data` pipelines from TFDS datasets or plain folders.

Entry point: :func:`paired_dataset`. It yields dicts ``{'rainy', 'clean', 'name'}`` with
``rainy``/``clean`` float32 ``[B, h, w, 3]`` in [0, 1] and ``name`` a ``tf.string`` ``[B]``, plus the
dataset features the caller asks for (``extra_features``). Built from the public primitives of
:mod:`erl_derain.data.streams`, as the unpaired streams of :mod:`erl_derain.data.unpaired` are.

Sources
-------
* a ``tfds.core.DatasetBuilder``, or a TFDS name (``'<name>'``, ``'<name>/<config>'``) that TFDS
  already knows: a dataset with ``rainy``/``clean`` Image features (and usually ``name`` Text). This
  module imports no builder package; the erl_derain names (``rain100h``, ``synthetic_rain``, ...) are
  registered by importing the catalog :mod:`erl_derain.datasets` (the ``erl-derain`` command does),
  which also resolves them (``erl_derain.datasets.load_builder``). A dataset that is not prepared yet
  is prepared on first use.
* ``'folder:/path'``: ``/path/rainy/`` and ``/path/clean/`` holding images paired by file stem
  (``rainy/a.jpg`` pairs with ``clean/a.png``). If ``/path/<split>/rainy`` exists it is used for
  that split, otherwise ``/path`` serves every split. Files are ordered naturally
  (``rain-2`` before ``rain-10``) and ``name`` is the shared stem. A folder has no extra features.

Extra features
--------------
``extra_features=(...)`` names features of a TFDS dataset to carry into the batches under their own
names (:func:`dataset_features` lists what a dataset has). A per-pixel map (an Image feature: uint8,
PNG-encoded, e.g. segmentation class ids or a rain-region mask) is cut with the images: in training
the same crop, flip, scale (nearest) and rotation, or the same one of the ten crops; in evaluation the
same centre crop. Any other feature (a scalar, a class label) is passed through unchanged. No
feature name means anything here. ``extra_features=None`` (the default, transitional) keeps the
earlier set: in training ``('segmentation',)`` when the dataset has it (none with ``ten_crop``), in
evaluation those of ``('rain_mask', 'has_rain_mask', 'segmentation')`` it has.

Determinism and resumption (training mode)
------------------------------------------
The training stream is a pure function of ``(seed, position)``, where position ``p`` counts examples
from the start of training (``epoch = p // N`` for ``N`` examples):

* order: each epoch is an independent permutation keyed on ``(seed, epoch)``. Folders (and TFDS
  splits small enough to cache, see ``cache_limit_bytes``) use a full stateless permutation; larger
  TFDS splits stream their serialized records through a shuffle buffer whose seed is derived from
  ``(seed, epoch)`` (the global ``tf.random.set_seed`` does not influence it);
* augmentation: the crop window and the flip of example ``p`` come from stateless random ops keyed
  on ``(seed, p)``; rainy, clean and the requested maps are stacked channel-wise and cropped/flipped
  together, so they always get the same window and flip (and the window does not depend on which
  maps are stacked).

``start_index=k`` therefore rebuilds the stream from epoch ``k // N`` and skips ``k % N`` elements
*before* any file is read or decoded (folders skip indices; TFDS skips serialized records), and
yields exactly what an uninterrupted run would have yielded from position ``k`` on. A resumed
trainer passes ``start_index = step * batch_size``.

Errors
------
Problems with a source raise :class:`DatasetError` (a ``ValueError``) naming the file, flag or
feature and what was expected; folders are checked up front (pairing, image headers, sizes against
each other and against the crop) before any TF work. Decode failures that only show while iterating
surface as ``tf.errors.InvalidArgumentError``; :func:`diagnose_folder` then decodes every file fully
and names the culprit.
"""

from __future__ import annotations

import os
from typing import Sequence

from PIL import Image

import tensorflow as tf

from erl_derain.data import streams as st
from erl_derain.data.streams import (DEFAULT_CACHE_LIMIT_BYTES, FOLDER_PREFIX, IMAGE_EXTENSIONS, TEN_CROPS,
                                     DatasetError, check_stream_arguments, crop_flip, excluded_examples, prepare)

__all__ = [
    "CROP_MODES",
    "DEFAULT_CACHE_LIMIT_BYTES",
    "DatasetError",
    "FOLDER_PREFIX",
    "IMAGE_EXTENSIONS",
    "RGB_PERMUTATIONS",
    "TEN_CROPS",
    "check_stream_arguments",
    "crop_flip",
    "dataset_features",
    "diagnose_folder",
    "excluded_examples",
    "list_folder_pairs",
    "num_examples",
    "paired_dataset",
    "prepare",
    "shuffle_channels",
]

CROP_MODES = ("random", "ten_crop", "scale_rotate")
RGB_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

_FOLDER_USAGE = f"'{FOLDER_PREFIX}/path/to/data' with rainy/ and clean/ inside"
_CORE_KEYS = ("rainy", "clean", "name")


# --------------------------------------------------------------------------------------------------
# Folders: pairing and checks
# --------------------------------------------------------------------------------------------------


def _resolve_folder(path: str, split: str | None) -> str:
    """The directory holding rainy/ and clean/: `path/<split>` if it has rainy/, else `path`."""
    root = st.folder_path(path, usage=_FOLDER_USAGE)
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


def list_folder_pairs(path: str, split: str | None = None) -> list[tuple[str, str, str]]:
    """Pairs ``(rainy_path, clean_path, name)`` of a paired folder, in natural file-name order.

    Args:
      path: a directory (or ``'folder:/dir'``) with ``rainy/`` and ``clean/`` sub-folders, or with
        ``<split>/rainy`` and ``<split>/clean`` when `split` is given.
      split: optional sub-folder to prefer (``train``, ``test``, ...).

    Images (png/jpg/jpeg/bmp/tif/tiff/webp, any case) pair on the file stem; other files are ignored.

    Raises:
      DatasetError: a sub-folder is missing, has no images, or an image has no partner.
    """
    root = _resolve_folder(path, split)
    rainy_dir, clean_dir = os.path.join(root, "rainy"), os.path.join(root, "clean")
    rainy, clean = st.folder_images(rainy_dir), st.folder_images(clean_dir)
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
                           f"without extension):\n" + st.format_list(problems))
    return [(rainy[s], clean[s], s) for s in sorted(rainy, key=st.natural_key)]


def _check_pairs(pairs, headers, crop_size: int | None, min_size: int | None = None) -> None:
    """Raise naming files whose rainy/clean sizes differ or that are smaller than the crop (or than
    ``min_size`` on a side)."""
    problems = []
    for rainy, clean, _ in pairs:
        r, c = headers[rainy], headers[clean]
        if (r.width, r.height) != (c.width, c.height):
            problems.append(f"size mismatch: rainy {rainy} is {r.width}x{r.height} (WxH) but clean {clean} "
                            f"is {c.width}x{c.height}; a pair must have the same size")
        elif crop_size is not None and min(r.width, r.height) < crop_size:
            problems.append(f"{rainy} is {r.width}x{r.height} (WxH), smaller than the {crop_size}x{crop_size} "
                            f"crop (crop_size={crop_size}); use a smaller crop or drop the image")
        elif min_size is not None and min(r.width, r.height) < min_size:
            problems.append(f"{rainy} is {r.width}x{r.height} (WxH), smaller than the {min_size}x{min_size} "
                            f"pixels needed here")
    if problems:
        raise DatasetError(f"{len(problems)} bad image pair(s):\n" + st.format_list(problems))


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
        return [(st.folder_path(path, usage=_FOLDER_USAGE), str(err))]
    problems: list[tuple[str, str]] = []
    sizes: dict[str, tuple[int, int]] = {}
    for rainy, clean, _ in pairs:
        for file in (rainy, clean):
            try:
                header = st.read_header(file)
                with Image.open(file) as im:
                    im.load()
                if header.tf_native:
                    data = tf.io.read_file(file)
                    shape = tf.io.decode_image(data, channels=3, expand_animations=False).shape
                else:
                    shape = st.fallback_decode(file.encode()).shape
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
# Folder pipeline
# --------------------------------------------------------------------------------------------------


def _folder_dataset(path, split, *, batch_size, crop_size, training, seed, start_index, flip, crop_mode="random",
                    min_size=None, rows=None):
    scale_rotate = crop_mode == "scale_rotate"
    pairs = list_folder_pairs(path, split)
    headers = st.scan_headers([p for pair in pairs for p in pair[:2]])
    _check_pairs(pairs, headers, crop_size, min_size)
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
    native = st.native_table([[headers[r].tf_native, headers[c].tf_native] for r, c, _ in pairs])

    def read(index):
        rainy = st.decode_file(rainy_paths[index], st.native_at(native, index, 0))
        clean = st.decode_file(clean_paths[index], st.native_at(native, index, 1))
        return rainy, clean, names[index]

    if training:
        ten = crop_mode == "ten_crop"
        per_epoch = num * TEN_CROPS if ten else num  # ten_crop: every (image, crop) is one example

        def load(position, index):
            if ten:
                rainy, clean, name = read(index // TEN_CROPS)
                rainy, clean = st.ten_crop([rainy, clean], index % TEN_CROPS, crop_size)
            else:
                rainy, clean, name = read(index)
                (rainy, clean), _ = st.random_crop_flip([rainy, clean], position, seed=seed, crop_size=crop_size,
                                                        flip=flip, scale_rotate=scale_rotate)
            return {"rainy": rainy, "clean": clean, "name": name}

        ds = st.training_positions(per_epoch, start_index, st.permuted_epochs(per_epoch, seed), rows)
    else:
        def load(index):
            rainy, clean, name = read(index)
            if crop_size is not None:
                rainy, clean = st.center_crop(rainy, crop_size), st.center_crop(clean, crop_size)
            return {"rainy": rainy, "clean": clean, "name": name}

        ds = tf.data.Dataset.range(start_index, num)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return st.finish(ds, training=training, batch_size=batch_size, rows=rows)


# --------------------------------------------------------------------------------------------------
# TFDS pipeline
# --------------------------------------------------------------------------------------------------


def _feature_names(extra_features) -> list[str]:
    """The requested names, in order, each once (a single string is one name)."""
    if isinstance(extra_features, str):
        extra_features = (extra_features,)
    names: list[str] = []
    for name in extra_features:
        if not isinstance(name, str):
            raise DatasetError(f"extra_features must be feature names (strings), got {extra_features!r}")
        if name not in names:
            names.append(name)
    return names


def _requested_features(builder, extra_features, *, training: bool, crop_mode: str, dataset: str):
    """(map keys, value keys) to carry: `extra_features` (None: none)."""
    kinds = st.feature_kinds(builder)
    if extra_features is None:
        names = []
    else:
        names = _feature_names(extra_features)
        core = [k for k in names if k in _CORE_KEYS]
        if core:
            raise DatasetError(f"extra_features {core} are always in the batch; name only other features")
        unknown = [k for k in names if k not in kinds]
        if unknown:
            raise DatasetError(f"TFDS dataset {dataset!r} has no feature {' / '.join(map(repr, unknown))} "
                               f"(extra_features; its features besides rainy/clean/name: {sorted(kinds)})")
    return [k for k in names if kinds[k] == st.MAP], [k for k in names if kinds[k] == st.VALUE]


def _checked_decode(rainy_bytes, clean_bytes, name, dataset: str, crop_size: int | None):
    """Decode a pair and assert (in-graph, naming the example) equal sizes and >= crop."""
    rainy, clean = st.decode_bytes(rainy_bytes), st.decode_bytes(clean_bytes)
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


def _static_size_check(builder, crop_size: int | None) -> None:
    """Fail early when TFDS metadata fixes the image size and it is below the crop."""
    if crop_size is None:
        return
    for key in ("rainy", "clean"):
        shape = builder.info.features[key].shape
        if shape[0] is not None and shape[1] is not None and min(shape[0], shape[1]) < crop_size:
            raise DatasetError(f"TFDS dataset {builder.name!r}: '{key}' images are {shape[1]}x{shape[0]} (WxH), "
                               f"smaller than the {crop_size}x{crop_size} crop (crop_size={crop_size})")


def _ten_crop_stream(records, num: int, *, in_memory: bool, buffer: int, seed: int, start_index: int, cut,
                     rows=None):
    """(positions dataset, load function) of the TFDS ten-crop training stream: ``10 N`` examples per
    epoch, every (image, crop) exactly once, the crops of one image spread over the epoch as in the
    authors' h5 file (SumiHui/MENET ``heavy/build_h5_dataset.py`` shuffles all ``10 N`` crops, and
    ``heavy/data_helper.py`` reshuffles them every epoch).

    * ``in_memory`` (the split fits ``cache_limit_bytes``): the serialized records are read once into
      memory and each epoch is a uniform permutation of the ``10 N`` (image, crop) indices keyed on
      (seed, epoch), as the folder pipeline does;
    * streamed: a stratified order. The epoch is ten tenths; in each tenth every image gives one crop,
      the records passing through a seeded shuffle buffer of ``buffer`` records (keyed on (seed, epoch,
      tenth)), and image ``i`` gives its crop ``sigma_i(tenth)`` for a permutation ``sigma_i`` of the
      ten crops keyed on (seed, epoch, i). So the ten crops of an image lie in ten different tenths.

    Elements before ``load`` are cheap (indices, or serialized records and a crop number), so resuming
    at ``start_index`` skips without decoding; ``load`` decodes one record per crop, and
    ``cut(record, k)`` makes the example of crop ``k`` of a serialized record."""
    per_epoch = num * TEN_CROPS

    if in_memory and tf.executing_eagerly():
        columns = tf.data.Dataset.get_single_element(records.batch(num))

        def load(position, index):
            i = index // TEN_CROPS
            return cut({k: v[i] for k, v in columns.items()}, index % TEN_CROPS)

        return st.training_positions(per_epoch, start_index, st.permuted_epochs(per_epoch, seed), rows), load

    indexed = records.enumerate()  # (index of the image in file order, record)

    def epoch_tenths(epoch):
        def tenth(r):
            def with_crop(i, record):
                key = tf.random.experimental.stateless_fold_in(st.op_seed(seed, st.STREAM_SHUFFLE, epoch), i)
                sigma = tf.random.experimental.stateless_shuffle(tf.range(TEN_CROPS, dtype=tf.int64), seed=key)
                return record, sigma[r]

            return st.seeded_shuffle(indexed, buffer, seed, epoch * TEN_CROPS + r).map(with_crop)

        return tf.data.Dataset.range(TEN_CROPS).flat_map(tenth)

    def load_streamed(position, element):
        record, k = element
        return cut(record, k)

    return st.training_positions(per_epoch, start_index, epoch_tenths, rows), load_streamed


def _tfds_pipeline(builder, split, *, dataset, batch_size, crop_size, training, seed, start_index, flip,
                   shuffle_buffer, cache_limit_bytes, crop_mode="random", exclude=None, extra_features=None,
                   rows=None):
    """The paired pipeline over a prepared TFDS builder (see `paired_dataset`)."""
    scale_rotate = crop_mode == "scale_rotate"
    st.require_features(builder, ("rainy", "clean"), "paired pipelines need 'rainy' and 'clean' images")
    maps, values = _requested_features(builder, extra_features, training=training, crop_mode=crop_mode,
                                       dataset=dataset)
    _static_size_check(builder, crop_size)
    num, num_bytes = st.split_size(builder, split)
    records = st.tfds_records(builder, split, ("rainy", "clean", *maps, *values))
    if exclude:  # before any shuffle: epochs and positions count the kept examples only
        records, num, num_bytes = st.exclude_records(records, num_bytes,
                                                     excluded_examples(builder, split, exclude, dataset=dataset),
                                                     f"{exclude} from TFDS dataset {dataset!r} split {split!r}")
    if num == 0:
        raise DatasetError(f"TFDS dataset {dataset!r} split {split!r} has no examples")
    features = builder.info.features
    channels = {k: int(features[k].shape[-1]) for k in maps}

    def decode(record):
        """A serialized record -> rainy/clean float images, the maps as uint8, the values decoded."""
        rainy, clean = _checked_decode(record["rainy"], record["clean"], record["name"], dataset, crop_size)
        example = {"rainy": rainy, "clean": clean, "name": record["name"]}
        example.update({k: st.decode_map(record[k], channels[k]) for k in maps})
        example.update({k: features[k].decode_example(record[k]) for k in values})
        return example

    if training:
        records, buffer = st.cache_or_buffer(records, num, num_bytes, cache_limit_bytes=cache_limit_bytes,
                                             shuffle_buffer=shuffle_buffer)
        if crop_mode == "ten_crop":
            def cut(record, k):
                example = decode(record)
                parts = st.ten_crop([example["rainy"], example["clean"], *(example[m] for m in maps)], k, crop_size)
                example.update(zip(("rainy", "clean", *maps), parts))
                return example

            # Every (image, crop) once per epoch, spread over the epoch as the authors' shuffled h5 file
            # (see _ten_crop_stream); positions count crops and are skipped before any decoding.
            ds, load = _ten_crop_stream(records, num, in_memory=st.fits_in_memory(num_bytes, cache_limit_bytes),
                                        buffer=buffer, seed=seed, start_index=start_index, cut=cut, rows=rows)
        else:
            def load(position, record):
                example = decode(record)
                (rainy, clean), cut_maps = st.random_crop_flip(
                    [example["rainy"], example["clean"]], position, seed=seed, crop_size=crop_size, flip=flip,
                    maps=[example[m] for m in maps], scale_rotate=scale_rotate)
                example.update(rainy=rainy, clean=clean)
                example.update(zip(maps, cut_maps))
                return example

            ds = st.training_positions(num, start_index, lambda epoch: st.seeded_shuffle(records, buffer, seed, epoch),
                                       rows)
    else:
        def load(record):
            example = decode(record)
            if crop_size is not None:
                for key in ("rainy", "clean", *maps):
                    example[key] = st.center_crop(example[key], crop_size)
            return example

        ds = records.skip(start_index)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return st.finish(ds, training=training, batch_size=batch_size, rows=rows)


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def _is_folder(dataset) -> bool:
    return isinstance(dataset, str) and dataset.startswith(FOLDER_PREFIX)


def _no_folder_features(dataset: str, what: str) -> DatasetError:
    return DatasetError(f"cannot {what}: {dataset} is a folder of image pairs, without features; use a TFDS "
                        f"dataset that records them")


def paired_dataset(dataset, split: str = "train", *, batch_size: int = 1, crop_size: int | None = None,
                   training: bool = True, seed: int = 0, start_index: int = 0, flip: bool = True,
                   data_dir: str | None = None, shuffle_buffer: int = 256,
                   cache_limit_bytes: int | None = None, manual_dir: str | None = None,
                   crop_mode: str = "random", exclude: dict | None = None,
                   extra_features: Sequence[str] | None = None, min_size: int | None = None,
                   rows: st.Rows | None = None) -> tf.data.Dataset:
    """A `tf.data.Dataset` of paired rainy/clean batches.

    Args:
      dataset: a ``tfds.core.DatasetBuilder`` (prepared on first use), a TFDS name TFDS knows
        (``'name'``, ``'name/config'``; the erl_derain names once :mod:`erl_derain.datasets` is
        imported), or ``'folder:/path'``.
      split: TFDS split (sub-split syntax such as ``'train[:90%]'`` works) or, for a folder, the
        sub-folder ``/path/<split>`` if it has ``rainy/`` (else ``/path`` is used for any split).
      batch_size: examples per batch.
      crop_size: side of the square crop; None keeps full images (then batch_size > 1 needs images of
        one size). Training crops at random, evaluation at the centre.
      crop_mode: ``'random'`` (a random window per example, optional flip), ``'ten_crop'`` (MENET:
        every image gives ten examples per epoch, the four corners and the centre of the image and of
        its mirror; ``flip`` is ignored; an epoch then holds ``10 * N`` examples, each (image, crop)
        once, in a uniform permutation of all of them, or for a TFDS split too large to cache a
        stratified order with an image's ten crops in ten different tenths of the epoch) or
        ``'scale_rotate'`` (the intensity-aware paper: a random down-scaling in [0.5, 1] before the
        random crop, the optional flip, then a random rotation by 0 or 180 degrees, which keeps the
        streaks' orientation).
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
      exclude: ``{feature: values}`` (TFDS datasets only): leave out the examples whose scalar feature
        equals one of its values (see `excluded_examples`), before anything else: epochs, positions
        and ``start_index`` then count the kept examples, so the stream stays deterministic and
        resumable (e.g. ``{'rain_radius': (0.2,)}``: cityscapes_rain without its small streaks).
      extra_features: names of dataset features to carry into the batches (TFDS datasets only; see
        `dataset_features`): per-pixel maps are cut with the images, other features passed through.
        ``()`` or None (default) for none.
      min_size: images must be at least this many pixels on each side (e.g. what a metric needs); a
        folder's smaller pairs are named in one DatasetError before any TF work (TFDS splits are not
        scanned: their images are checked by the caller as they come).
      rows: a training stream's shard (``streams.Rows``; ``batch_size`` is the global batch): batches
        of the rows of each global batch one worker reads; nothing else is decoded.

    Returns:
      Batches ``{'rainy': float32 [B,h,w,3] in [0,1], 'clean': same, 'name': tf.string [B]}`` plus
      each extra feature under its own name: a map as uint8 ``[B,h,w,c]`` cut like the images (e.g.
      ``'segmentation'``, 255 = ignore; ``'rain_mask'``, non-zero = rain), a value as the dataset
      stores it, ``[B]`` for a scalar (e.g. ``'has_rain_mask'``, bool).

    Raises:
      DatasetError: bad arguments, unknown dataset or feature, or a bad folder/file (named in the message).
    """
    check_stream_arguments(batch_size, crop_size, start_index)
    if crop_mode not in CROP_MODES:
        raise DatasetError(f"--crop_mode must be one of {', '.join(CROP_MODES)}, got {crop_mode!r}")
    if crop_mode == "ten_crop" and crop_size is None and training:
        raise DatasetError("--crop_mode=ten_crop needs --crop_size (the side of the ten crops)")
    if isinstance(dataset, str) and not dataset:
        raise DatasetError(f"dataset must be a TFDS name or '{FOLDER_PREFIX}/path', got {dataset!r}")
    flip = bool(flip) and training
    seed = int(seed)
    if rows is not None and not training:
        raise DatasetError("rows (a worker's shard) are for training streams; evaluation reads whole splits")

    if _is_folder(dataset):
        if exclude:
            raise _no_folder_features(dataset, f"exclude examples by {' / '.join(map(repr, exclude))}")
        if extra_features:
            raise _no_folder_features(dataset, f"give extra_features {list(_feature_names(extra_features))}")
        return _folder_dataset(dataset, split, batch_size=batch_size, crop_size=crop_size, training=training,
                               seed=seed, start_index=start_index, flip=flip, crop_mode=crop_mode, min_size=min_size,
                               rows=rows)
    builder = st.prepared_builder(dataset, data_dir, manual_dir)
    return _tfds_pipeline(
        builder, split, dataset=dataset if isinstance(dataset, str) else builder.name, batch_size=batch_size,
        crop_size=crop_size, training=training, seed=seed, start_index=start_index, flip=flip,
        shuffle_buffer=shuffle_buffer, crop_mode=crop_mode, exclude=exclude, extra_features=extra_features, rows=rows,
        cache_limit_bytes=DEFAULT_CACHE_LIMIT_BYTES if cache_limit_bytes is None else cache_limit_bytes)


def dataset_features(dataset, *, data_dir: str | None = None) -> dict[str, str]:
    """``{feature: kind}`` of the features a source can add to its batches (`extra_features`):
    ``'map'`` (``streams.MAP``) for a per-pixel map cut with the images, ``'value'``
    (``streams.VALUE``) for a feature passed through. ``rainy``/``clean``/``name`` are not listed
    (always there); a folder has none. Reads the dataset's metadata only (nothing is prepared).

    A method asks for what it needs, e.g. ``extra_features=("segmentation",) if "segmentation" in
    dataset_features(source) else ()``."""
    if _is_folder(dataset):
        return {}
    return st.feature_kinds(st.resolve_builder(dataset, data_dir))


def _example_draws(batch, index, *, seed: int, stream: int, start_index: int, batch_size: int,
                   rows: st.Rows | None, **uniform):
    """One stateless uniform draw per example of batch ``index`` of a training stream, keyed on (seed,
    ``stream``, the batch's first position); with ``rows``, the global batch's draws (training batches
    are full), this worker's rows of them. ``uniform``: ``minval``/``maxval``/``dtype``."""
    key = st.op_seed(seed, stream, tf.cast(start_index, tf.int64) + index * batch_size)
    if rows is None:
        return tf.random.stateless_uniform([tf.shape(batch["rainy"])[0]], key, **uniform)
    return tf.random.stateless_uniform([batch_size], key, **uniform)[rows.first:rows.first + rows.count]


def shuffle_channels(ds: tf.data.Dataset, *, seed: int, start_index: int, batch_size: int,
                     rows: st.Rows | None = None) -> tf.data.Dataset:
    """A colour augmentation for achromatic rain: the RGB channels of each example's rainy and clean
    images are permuted alike, by one of the six permutations, drawn from (seed, the batch's first
    example position). Rain added equally to R, G and B (``rain_synthesis``, and the veil model with
    a grey atmospheric light) stays a valid pair, while a few photos give greens and blues that their
    own colours lack. ``ds`` is a training stream of `paired_dataset` that starts at example
    ``start_index`` with batches of ``batch_size`` (deterministic, so a resumed run sees the same);
    with ``rows``, a worker's shard of that stream (the draws are the global batch's, sliced)."""
    perms = tf.constant(RGB_PERMUTATIONS, tf.int32)

    def permute(index, batch):
        k = _example_draws(batch, index, seed=seed, stream=st.STREAM_COLOR, start_index=start_index,
                           batch_size=batch_size, rows=rows, minval=0, maxval=6, dtype=tf.int32)
        order = tf.gather(perms, k)  # [B, 3]
        out = dict(batch)
        for key in ("rainy", "clean"):
            out[key] = tf.gather(batch[key], order, axis=-1, batch_dims=1)
        return out

    return ds.enumerate().map(permute, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def rain_free_pairs(ds: tf.data.Dataset, *, fraction: float, seed: int, start_index: int, batch_size: int,
                    rows: st.Rows | None = None) -> tf.data.Dataset:
    """Rain-free pairs in a training stream: each example's rainy image is replaced by its clean one
    with probability ``fraction``, drawn from (seed, the example's position), so that a network also
    learns to leave rain-free content alone (identity pairs; a ``rain_mask`` of such an example is
    zeroed, other features are kept). ``ds``, ``start_index``, ``batch_size`` and ``rows`` as in
    `shuffle_channels` (deterministic and resumable; a worker's rows are the global batch's draws,
    sliced)."""
    if not 0.0 <= fraction <= 1.0:
        raise DatasetError(f"--rain_free_fraction must be in [0, 1], got {fraction}")

    def replace(index, batch):
        free = _example_draws(batch, index, seed=seed, stream=st.STREAM_RAIN_FREE, start_index=start_index,
                              batch_size=batch_size, rows=rows) < fraction
        out = dict(batch)
        out["rainy"] = tf.where(free[:, None, None, None], batch["clean"], batch["rainy"])
        if "rain_mask" in batch:
            out["rain_mask"] = tf.where(free[:, None, None, None], tf.zeros_like(batch["rain_mask"]),
                                        batch["rain_mask"])
        return out

    return ds.enumerate().map(replace, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def num_examples(dataset, split: str = "train", *, data_dir: str | None = None,
                 manual_dir: str | None = None, exclude: dict | None = None) -> int:
    """Number of examples (pairs) in a split: used to turn epochs into steps. ``exclude`` as in
    `paired_dataset`: the examples it leaves out are not counted."""
    if _is_folder(dataset):
        if exclude:
            raise _no_folder_features(dataset, f"exclude examples by {' / '.join(map(repr, exclude))}")
        return len(list_folder_pairs(dataset, split))
    builder = st.prepared_builder(dataset, data_dir, manual_dir)
    num, _ = st.split_size(builder, split)
    name = dataset if isinstance(dataset, str) else builder.name
    return num - int(excluded_examples(builder, split, exclude, dataset=name).sum()) if exclude else num
