"""The data a run trains and is evaluated on, from its settings (method-agnostic).

* :func:`dataset_source`: a ``--dataset`` name as the pipelines take it (``synthetic_rain`` on your
  own ``--clean_dir`` photos is a builder with a config of its own);
* :func:`training_stream`: ``dataset_fn(start_index)`` for :func:`erl_derain.training.train`: the
  paired stream (with the per-pixel features the method asks for, the channel shuffle, the excluded
  rain sizes) merged with the method's own streams (:class:`erl_derain.methods.StreamSpec`, e.g.
  JRGR's unpaired real rain);
* :func:`steps_per_epoch`, :func:`stage_steps`, :func:`lr_schedule`: epochs -> steps, the stage
  lengths and the learning-rate rule of a run;
* :func:`evaluation_dataset`: full-size test pairs.
"""

from __future__ import annotations

import os

import tensorflow as tf

from erl_derain import datasets  # noqa: F401  (registers the TFDS builders: names resolve)
from erl_derain.data import pipelines, streams
from erl_derain.data.pipelines import DatasetError


def dataset_source(name: str, clean_dir: str | None = None, data_dir: str | None = None, clean_exclude=()):
    """The ``--dataset`` value for the pipelines: a name, or for synthetic_rain on ``clean_dir`` photos
    a TFDS builder with a config of its own (prepared into its own folder of the data_dir), rendered as
    the named config (``synthetic_rain/natural``; ``default`` without one), without the photographs of
    the ``clean_exclude`` folders."""
    if clean_dir and name.split("/")[0] == "synthetic_rain":
        from tfds_builders.synthetic_rain.synthetic_rain_dataset_builder import Builder, custom_config

        if not os.path.isdir(clean_dir):
            raise DatasetError(f"--clean_dir={clean_dir}: no such folder")
        for folder in clean_exclude or ():
            if not os.path.isdir(folder):
                raise DatasetError(f"--clean_exclude={folder}: no such folder")
        base = name.split("/", 1)[1] if "/" in name else "default"
        try:
            config = custom_config(clean_dir, base=base, exclude_dirs=tuple(clean_exclude or ()))
        except ValueError as e:
            raise DatasetError(f"--dataset={name}: {e}") from None
        streams.check_data_dir(data_dir)
        return Builder(config=config, data_dir=data_dir)
    return name


def _is_folder(source) -> bool:
    return isinstance(source, str) and source.startswith(pipelines.FOLDER_PREFIX)


def no_reference_images(dataset: str, split: str | None = None) -> list[str] | None:
    """The photos of a ``folder:`` dataset without clean images (real rain: scored by no-reference
    quality, :mod:`erl_derain.quality`), or None for a paired folder or any other dataset. The folder
    (or its ``<split>/`` sub-folder) holds the photos directly, or a ``rainy/`` sub-folder and no
    ``clean/``. Anything else is left to the paired reader (and its errors)."""
    from erl_derain.data.image_io import IMAGE_EXTENSIONS, list_images

    if not _is_folder(dataset):
        return None
    root = os.path.expanduser(dataset[len(pipelines.FOLDER_PREFIX):])
    if not os.path.isdir(root):
        return None
    for base in ([os.path.join(root, split)] if split else []) + [root]:
        if not os.path.isdir(base):
            continue
        rainy, clean = os.path.join(base, "rainy"), os.path.join(base, "clean")
        if os.path.isdir(rainy):
            return None if os.path.isdir(clean) else list_images(rainy)
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(base)):
            return list_images(base)
    return None


def excluded(record) -> dict | None:
    """``--exclude_rain_sizes`` as the training stream's ``exclude`` (None when unset)."""
    run = record.run
    if not run.exclude_rain_sizes:
        return None
    from tfds_builders.cityscapes_rain.cityscapes_rain_dataset_builder import exclude_rain_sizes

    source = dataset_source(run.dataset, run.clean_dir, run.data_dir, run.clean_exclude)
    features = [] if _is_folder(source) else list(datasets.load_builder(source, run.data_dir).info.features.keys())
    return exclude_rain_sizes(list(run.exclude_rain_sizes), features, dataset=run.dataset)


def paired_features(record) -> tuple[str, ...]:
    """The per-pixel features the method's paired stream carries, among those the dataset has."""
    wanted = record.spec.paired_features
    if not wanted:
        return ()
    run = record.run
    source = dataset_source(run.dataset, run.clean_dir, run.data_dir, run.clean_exclude)
    if _is_folder(source):
        return ()
    have = pipelines.dataset_features(source, data_dir=run.data_dir)
    return tuple(f for f in wanted if f in have)


def steps_per_epoch(record, global_batch: int, split: str = "train") -> float:
    run = record.run
    n = pipelines.num_examples(dataset_source(run.dataset, run.clean_dir, run.data_dir, run.clean_exclude), split,
                               data_dir=run.data_dir, manual_dir=run.manual_dir, exclude=excluded(record))
    if run.crop_mode == "ten_crop":
        n *= pipelines.TEN_CROPS
    return n / global_batch


def stage_steps(record, trainer, global_batch: int, split: str = "train") -> list[int]:
    """The steps of each stage: ``--stage_steps``, or ``--stage_epochs`` times the steps per epoch."""
    run = record.run
    if run.stage_steps:
        return [int(s) for s in run.stage_steps]
    if run.stage_epochs:
        per_epoch = steps_per_epoch(record, global_batch, split)
        return [max(1, int(round(float(e) * per_epoch))) for e in run.stage_epochs]
    flag = f" of {trainer.schedule_flag}" if trainer.schedule_flag else ""
    raise DatasetError("give --stage_steps (or --stage_epochs), one value per stage of the schedule"
                       f"{flag}: " + ", ".join(s.name for s in trainer.stages))


def lr_schedule(record, global_batch: int, split: str = "train"):
    """The learning-rate rule of a run: a StepSchedule (--lr_decay_epochs / --lr_decay_steps), a
    LinearDecaySchedule (--lr_linear_decay_epochs) or None (the plateau rule)."""
    from erl_derain import training

    run = record.run
    if run.lr_decay_epochs and run.lr_decay_steps:
        raise DatasetError("give --lr_decay_epochs or --lr_decay_steps, not both")
    if run.lr_linear_decay_epochs:
        if run.lr_decay_epochs or run.lr_decay_steps:
            raise DatasetError("give --lr_linear_decay_epochs or --lr_decay_epochs / --lr_decay_steps, not both")
        values = list(run.lr_linear_decay_epochs)
        if len(values) != 2 or any(v < 0 or v != int(v) for v in values):
            raise DatasetError("--lr_linear_decay_epochs must be two whole numbers >= 0, N,D (epochs at the initial "
                               f"rate, epochs of linear decay), got {','.join(str(v) for v in values)}")
        return training.LinearDecaySchedule(record.lr, int(values[0]), int(values[1]),
                                            steps_per_epoch(record, global_batch, split))
    if run.lr_decay_steps:
        boundaries = [int(s) for s in run.lr_decay_steps]
    elif run.lr_decay_epochs:
        per_epoch = steps_per_epoch(record, global_batch, split)
        boundaries = [max(1, int(round(float(e) * per_epoch))) for e in run.lr_decay_epochs]
    else:
        return None
    return training.StepSchedule(record.lr, boundaries, run.lr_decay_factor)


def merge_streams(paired: tf.data.Dataset, others: dict) -> tf.data.Dataset:
    """Each batch of ``paired`` with the tensors of the other streams' batches added (their keys)."""
    if not others:
        return paired
    keys = list(others)

    def merge(p, *extra):
        out = dict(p)
        for batch in extra:
            out.update(batch)
        return out

    return tf.data.Dataset.zip((paired, *(others[k] for k in keys))).map(merge)


def training_stream(record, *, global_batch: int, split: str = "train", shuffle_buffer: int = 256,
                    cache_limit_bytes: int | None = None, check: bool = True):
    """``dataset_fn(start_index, rows=None)`` of a run: the paired stream and the method's own streams,
    merged; with ``check`` each source is opened once first, so a bad dataset fails before training
    starts. ``rows`` (``data.streams.Rows``): one worker's rows of each global batch, the only examples
    it reads and decodes (``distribute.distribute_batches``)."""
    run, spec, cfg = record.run, record.spec, record.method_config
    source = dataset_source(run.dataset, run.clean_dir, run.data_dir, run.clean_exclude)
    stream = dict(batch_size=global_batch, crop_size=run.crop_size, training=True, seed=run.seed,
                  data_dir=run.data_dir, flip=run.flip, shuffle_buffer=shuffle_buffer, manual_dir=run.manual_dir,
                  crop_mode=run.crop_mode, cache_limit_bytes=cache_limit_bytes, exclude=excluded(record),
                  extra_features=paired_features(record))

    def paired_fn(start_index: int, rows=None) -> tf.data.Dataset:
        ds = pipelines.paired_dataset(source, split, start_index=start_index, rows=rows, **stream)
        if run.channel_shuffle:
            ds = pipelines.shuffle_channels(ds, seed=run.seed, start_index=start_index, batch_size=global_batch,
                                            rows=rows)
        if run.rain_free_fraction:
            ds = pipelines.rain_free_pairs(ds, fraction=run.rain_free_fraction, seed=run.seed,
                                           start_index=start_index, batch_size=global_batch, rows=rows)
        return ds

    def extra_fn(start_index: int, rows=None) -> dict:
        return {s.key: s.build(cfg, record, start_index=start_index, batch_size=global_batch,
                               cache_limit_bytes=cache_limit_bytes, rows=rows) for s in spec.streams}

    if check:
        paired_fn(0)
        extra_fn(0)

    def dataset_fn(start_index: int, rows=None) -> tf.data.Dataset:
        return merge_streams(paired_fn(start_index, rows), extra_fn(start_index, rows))

    return dataset_fn


def evaluation_dataset(dataset: str, split: str, *, clean_dir: str | None = None, data_dir: str | None = None,
                       manual_dir: str | None = None, min_size: int | None = None,
                       clean_exclude=()) -> tf.data.Dataset:
    """Full-size pairs, batch 1, in file order (with the dataset's rain masks when it has them: the
    dissection of ``compare`` uses them). ``min_size``: the side the metrics need; a folder's smaller
    pairs are named up front (``pipelines.paired_dataset``)."""
    source = dataset_source(dataset, clean_dir, data_dir, clean_exclude)
    have = {} if _is_folder(source) else pipelines.dataset_features(source, data_dir=data_dir)
    extras = tuple(k for k in ("rain_mask", "has_rain_mask") if k in have)
    return pipelines.paired_dataset(source, split, batch_size=1, crop_size=None, training=False, data_dir=data_dir,
                                    manual_dir=manual_dir, extra_features=extras, min_size=min_size)


def image_summary_batch(record, split: str, *, count: int = 3, max_side: int = 256, fallback=None) -> dict | None:
    """The fixed validation batch of ``--image_summary_every``: the first ``count`` pairs of ``split``
    of the run's dataset, each centre-cropped to one square side (the smallest side among them, at most
    ``max_side``) so that they stack; ``{"rainy", "clean": float32 [N, s, s, 3], "name": [...]}``. A
    dataset without that split falls back to ``fallback()`` (e.g. the first training batch) with a
    warning; None when neither is available."""
    import numpy as np
    from absl import logging

    run = record.run
    try:
        ds = evaluation_dataset(run.dataset, split, clean_dir=run.clean_dir, data_dir=run.data_dir,
                                clean_exclude=run.clean_exclude)
        examples = [(ex["rainy"].numpy()[0], ex["clean"].numpy()[0],
                     ex["name"].numpy()[0].decode() if "name" in ex else str(i)) for i, ex in enumerate(ds.take(count))]
    except Exception as e:  # pylint: disable=broad-except  (pictures are optional; the run goes on)
        logging.warning("--image_summary_every: no %r split of %s (%s); using the first training batch", split,
                        run.dataset, str(e)[:200])
        examples = []
    if not examples:
        batch = fallback() if fallback is not None else None
        if batch is None:
            return None
        rainy, clean = (np.asarray(batch[k], np.float32)[:count] for k in ("rainy", "clean"))
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(batch.get("name", []))[:count]]
        examples = list(zip(rainy, clean, names or [str(i) for i in range(len(rainy))]))
    side = min(max_side, *(min(r.shape[:2]) for r, _, _ in examples))

    def centre(a):
        top, left = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
        return a[top:top + side, left:left + side]

    return {"rainy": np.stack([centre(r) for r, _, _ in examples]).astype(np.float32),
            "clean": np.stack([centre(c) for _, c, _ in examples]).astype(np.float32),
            "name": [n for _, _, n in examples]}
