"""The catalog of erl_derain's TFDS datasets: name -> builder.

Importing this module imports :mod:`tfds_builders`, which registers the erl_derain builders with
TFDS (``synthetic_rain``, ``rain100h``, ``rain100l``, ``ddn``, ``did``, ``agan``, ``rain800``,
``real_rain``, ``cityscapes_rain``). After that, every ``tfds.builder(name)`` and so every stream of
:mod:`erl_derain.data` (:func:`erl_derain.data.pipelines.paired_dataset`,
:func:`erl_derain.data.unpaired.unpaired_dataset`) takes those names.

The data layer (:mod:`erl_derain.data`) never imports the builders: the builders depend on it
(``rain_synthesis``, ``image_io``), and it takes either a resolved ``tfds.core.DatasetBuilder`` or a
name TFDS already knows. Entry points (the ``erl-derain`` command, scripts, notebooks) import this
module once, or resolve names here with :func:`load_builder` / :func:`prepared_builder`.
"""

from __future__ import annotations

import logging

from erl_derain.data import streams
from erl_derain.data.streams import FOLDER_PREFIX, DatasetError, UnknownDatasetError, prepare

__all__ = ["DatasetError", "available_builders", "load_builder", "prepare", "prepared_builder"]

log = logging.getLogger(__name__)

IMPORT_ERROR: str | None = None  # why `tfds_builders` did not import (a partial install), else None
try:
    import tfds_builders  # noqa: F401  pylint: disable=unused-import  (registers the builders)
except ImportError as _err:  # a partial install should not break other TFDS datasets
    IMPORT_ERROR = str(_err)
    log.warning("could not import tfds_builders (erl_derain datasets unavailable): %s", _err)


def available_builders() -> list[str]:
    """Names of the TFDS builders registered by the `tfds_builders` package."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    names, stack = set(), [tfds.core.DatasetBuilder]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("tfds_builders.") and getattr(cls, "name", None):
            names.add(cls.name)
    # Abstract bases shared by several builders are subclasses too, but not registered datasets.
    return sorted(names & set(tfds.list_builders(with_community_datasets=False)))


def load_builder(dataset, data_dir: str | None = None):
    """The TFDS builder of `dataset` (a name, ``name/config``, or a builder), not prepared; an
    unknown name raises a DatasetError listing the erl_derain datasets."""
    try:
        return streams.tfds_builder(dataset, data_dir)
    except UnknownDatasetError as err:
        listed = "\n".join(f"  - {n}" for n in available_builders()) or (
            f"  (none: the tfds_builders package did not import: {IMPORT_ERROR or 'unknown error'})")
        raise DatasetError(
            f"unknown dataset {dataset!r}. erl_derain TFDS datasets:\n{listed}\n"
            f"or a folder of pairs: '{FOLDER_PREFIX}/path' with rainy/ and clean/ sub-folders "
            f"(any other TFDS dataset with 'rainy' and 'clean' image features works too)") from err.__cause__


def prepared_builder(dataset, data_dir: str | None = None, manual_dir: str | None = None):
    """`load_builder(dataset)`, prepared on first use (from `manual_dir` for the benchmarks that
    cannot be downloaded): what the streams take."""
    builder = load_builder(dataset, data_dir)
    if not builder.is_prepared():
        prepare(builder, manual_dir=manual_dir)
    return builder
