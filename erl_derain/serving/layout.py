"""The serving API's names and the export folder's layout, shared by the export, the server
config files and the clients (standard library only: no TensorFlow).

Signature, input and output names (keep in sync with the ``erl_derain.serving`` docstring), the
file names next to the exports, and the two readers that need no TensorFlow: ``next_version``
(the version folders of an ``export_base``) and ``read_export_info`` (``assets.extra/erl_derain.json``).
Both take local folders or file-system URLs (``erl_derain.fileio``: TensorFlow only for a URL).
"""

from __future__ import annotations

import json
import os
import re

from erl_derain import fileio

SERVING_DEFAULT = "serving_default"
DERAIN_IMAGE = "derain_image"
METADATA = "metadata"
IMAGES = "images"
DERAINED = "derained"
IMAGE_BYTES = "image_bytes"
DERAINED_PNG_BYTES = "derained_png_bytes"
METADATA_OUTPUTS = ("method", "flags_json", "version", "precision")
SIGNATURE_IO = {SERVING_DEFAULT: ((IMAGES,), (DERAINED,)),
                DERAIN_IMAGE: ((IMAGE_BYTES,), (DERAINED_PNG_BYTES,)),
                METADATA: ((), METADATA_OUTPUTS)}

MODELS_CONFIG = "models.config"
DOCKER_MODELS_CONFIG = "models.docker.config"
BATCHING_PARAMETERS = "batching_parameters.txt"
EXPORT_INFO = os.path.join("assets.extra", "erl_derain.json")
DOCKER_MODELS_ROOT = "/models"


def next_version(export_base: str) -> int:
    """1 + the largest integer folder in ``export_base`` (1 when there is none)."""
    if not fileio.isdir(export_base):
        return 1
    versions = [int(d) for d in fileio.listdir(export_base)
                if re.fullmatch(r"\d+", d) and fileio.isdir(os.path.join(export_base, d))]
    return max(versions, default=0) + 1


def version_folder(export_base: str, version: int | None = None, *, overwrite: bool = False) -> tuple[int, str]:
    """``(version, <export_base>/<version>)`` of a new export: ``version`` (default ``next_version``)
    must be a non-negative integer, and an existing folder is refused (``FileExistsError``) unless
    ``overwrite``. ``export_base`` is made absolute (a URL is kept as it is)."""
    export_base = fileio.abspath(export_base)
    version = next_version(export_base) if version is None else int(version)
    if version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version}")
    folder = os.path.join(export_base, str(version))
    if fileio.exists(folder) and not overwrite:
        raise FileExistsError(f"{folder} exists: choose another --version, or leave it out for the next one "
                              f"({next_version(export_base)})")
    return version, folder


def read_export_info(export_dir: str) -> dict:
    """``assets.extra/erl_derain.json`` of one exported version: method, config (training flags),
    version, pad_multiple, model_name, signatures. Plain JSON: no TensorFlow needed."""
    return json.loads(fileio.read_text(os.path.join(export_dir, EXPORT_INFO)))
