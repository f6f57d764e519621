"""SavedModel export for TF Serving, its server config files, and REST / gRPC clients for it.

The package: ``export`` (``export_saved_model``: the SavedModel and its three signatures; imports
TensorFlow), ``server_config`` (models.config / models.docker.config / batching parameters, no
TensorFlow), ``client`` (REST and gRPC clients, ``derain_files_via_server``; no TensorFlow: the
tiles of large photos are blended in NumPy) and ``layout`` (the signature and file names,
``next_version``, ``read_export_info``); ``formats`` writes the other export formats (ONNX and LiteRT
files, ``export_file``: ``erl-derain export --format=onnx|litert``). Every public name is importable from here;
``import erl_derain.serving`` does not import TensorFlow (the export names load it on first use).

Layout written by ``export_saved_model`` (``erl-derain export --model_dir=... --export_base=exports/erlnet``)::

    exports/                            the server's model root (--serving_root; default: export_base's parent)
        erlnet/                         export_base = the model's base_path; model name = folder name
            1/  2/ ...                  one SavedModel per version (TF Serving loads integer folders)
                assets.extra/erl_derain.json   method, training flags, version, signatures (plain JSON)
        memd/ ...                       other models exported next to it
        models.config                   --model_config_file: one config block per model,
                                        base_path = the absolute export_base
        models.docker.config            the same for the container: base_path = /models/<folder>
        batching_parameters.txt         --batching_parameters_file (written once; yours to tune)
        .models.config.lock             the lock two concurrent exports take

Nothing is written outside the model root; ``--serving_root`` names it (it must hold
``--export_base``, anywhere below it: the Docker base_path is ``/models/<export_base below the root>``).

Each export adds or replaces its own model's block in both config files (serving the version just
exported: ``model_version_policy { specific { versions: N } }``) and keeps the other models'
blocks verbatim, so one server serves every model of the folder.

A version is written to a hidden temporary folder inside ``<export_base>`` and renamed into place,
so a polling server never sees a half-written version; an existing version is refused unless
``overwrite=True`` (a server that already loaded that version keeps serving the old one: export a
new version instead). On a file-system URL (``gs://...``), which has no atomic folder rename, the
version is copied in file by file, ``saved_model.pb`` last (``serving.export``; docs/scaling.md).
The graph is the inference network only (an ``inference.InferenceModel``
around ``trainer.inference_model()``, called with ``training=False``: no clean autoencoder, no
optimizer slots); the SavedModel's variables are exactly that model's.

Signatures (method name ``tensorflow/serving/predict``)
    ``serving_default``
        ``images``: float32 [batch, height, width, 3], RGB in [0, 1], any height and width (the
        graph pads to the network's multiple and crops back) -> ``derained``: float32, same shape,
        in [0, 1]. All images of one request share one size (a tensor is rectangular). The channel
        dimension is declared as -1 so that a wrong channel count reaches the graph's own check
        ("images: expected 3 channels (RGB) ...") instead of failing inside a convolution.
    ``derain_image``
        ``image_bytes``: string [batch] of encoded JPEG / PNG / GIF / BMP / WebP files (over REST:
        ``{"b64": "..."}``) -> ``derained_png_bytes``: string [batch] of 8-bit RGB PNGs (the
        ``_bytes`` suffix makes TF Serving's REST API return them as ``{"b64": "..."}``). Images of
        one request may differ in size: they are decoded, de-rained and encoded one at a time
        (``tf.map_fn``, one image in flight to bound memory). Grey inputs become RGB, alpha is
        dropped, 16-bit PNGs are decoded at full precision; quantisation is ``floor(255 x + 0.5)``.
        EXIF orientation is not applied (TF's decoders ignore it): ``derain_files_via_server``
        sends upright pixels for rotated photos. A file whose header declares more pixels than the
        export's ``max_pixels`` (``--max_pixels`` at export time, default 100 MP) is refused before
        it is decoded: ``image_bytes[i]: image too large: W x H ...``.
    ``metadata``
        no input -> ``method``, ``flags_json`` (the training flags, JSON), ``version`` and
        ``precision`` (what the graph computes in: ``float32``, or ``bfloat16`` from ``export
        --precision=bfloat16``): string scalars. Reachable from Python (``tf.saved_model.load``) and over gRPC; TF Serving's REST
        API refuses signatures without inputs ("Failed to get input map for signature"), and its
        request batching needs an input with a batch dimension ("Batching Run() must have at
        least one input tensor" under ``--enable_batching``). Without gRPC, read the same facts
        from ``assets.extra/erl_derain.json`` (``read_export_info``).

Bad requests fail with messages naming the input: ``images: expected 3 channels (RGB) ...``,
``images: values must lie in [0, 1] ...``, ``image_bytes[i]: not a JPEG, PNG, GIF, BMP or WebP
file ...`` (and a corrupt file's decoder error comes from the node ``decode_image_bytes``); a wrong
dtype is refused by the signature itself.

Serving (8501 = REST, 8500 = gRPC; use a TF Serving release not older than the TensorFlow that
exported, 2.21 here)::

    # TF Serving binary, on this machine (models.config holds absolute base_paths):
    tensorflow_model_server --rest_api_port=8501 --port=8500 \\
        --model_config_file=/abs/exports/models.config --rest_api_timeout_in_ms=300000

    # Docker (the model root mounted at /models; models.docker.config points there):
    docker run --rm -p 8501:8501 -p 8500:8500 -v /abs/exports:/models tensorflow/serving \\
        --model_config_file=/models/models.docker.config --rest_api_timeout_in_ms=300000

    # The same with server-side request batching (see the caveats below):
    tensorflow_model_server --rest_api_port=8501 --port=8500 \\
        --model_config_file=/abs/exports/models.config --rest_api_timeout_in_ms=300000 \\
        --enable_batching --batching_parameters_file=/abs/exports/batching_parameters.txt
    docker run --rm -p 8501:8501 -p 8500:8500 -v /abs/exports:/models tensorflow/serving \\
        --model_config_file=/models/models.docker.config --rest_api_timeout_in_ms=300000 \\
        --enable_batching --batching_parameters_file=/models/batching_parameters.txt

    # A request by hand:
    curl -s http://localhost:8501/v1/models/erlnet:predict -d '{"signature_name": "derain_image",
        "instances": [{"image_bytes": {"b64": "'"$(base64 -w0 rainy.jpg)"'"}}]}'
    # -> {"predictions": [{"b64": "<PNG>"}]}

Batching (``--enable_batching``) merges concurrent requests of one signature into one run. A
de-raining network is compute bound (one 512x512 image keeps every CPU core busy), so on CPU it
gains little (the plain command lines leave it off); on a GPU it raises throughput. Caveats, from
TF Serving's BatchingSession: concurrent ``serving_default`` requests must have equal image sizes
(otherwise "Tensors with name 'images' ... have different shapes and padding is turned off";
``derain_image``'s string batches merge whatever the image sizes), and ``metadata`` stops working
(see above). The server's REST timeout defaults to 30 s, hence ``--rest_api_timeout_in_ms``.

Clients (standard library only for REST; gRPC needs ``pip install erl_derain[serving]``):
``predict_rest``, ``predict_grpc``, ``server_metadata`` (gRPC) and ``derain_files_via_server`` (the
``erl-derain derain --server=host:port --model_name=...`` mode).
"""

from __future__ import annotations

import importlib

from erl_derain.serving.client import (ServerUnavailable, ServingError, build_predict_json, decode_png,
                                       derain_files_via_server, derain_tiled, encode_png, make_predict_request,
                                       parse_predict_json, parse_predict_response, predict_grpc, predict_rest,
                                       predict_url, rest_url, server_metadata, server_runner)
from erl_derain.serving.layout import (BATCHING_PARAMETERS, DERAIN_IMAGE, DERAINED, DERAINED_PNG_BYTES,
                                       DOCKER_MODELS_CONFIG, DOCKER_MODELS_ROOT, EXPORT_INFO, IMAGE_BYTES, IMAGES,
                                       METADATA, METADATA_OUTPUTS, MODELS_CONFIG, SERVING_DEFAULT, SIGNATURE_IO,
                                       next_version, read_export_info)
from erl_derain.serving.server_config import (batching_parameters_text, config_blocks, model_config_block,
                                              models_config_text, server_command_lines, serving_root,
                                              update_models_config, write_server_config)

# Names of erl_derain.serving.export, loaded on first use (that module imports TensorFlow).
_LAZY = {"export_saved_model": "export", "DerainModule": "export", "RANGE_TOLERANCE": "export"}

__all__ = sorted([
    "BATCHING_PARAMETERS", "DERAIN_IMAGE", "DERAINED", "DERAINED_PNG_BYTES", "DOCKER_MODELS_CONFIG",
    "DOCKER_MODELS_ROOT", "EXPORT_INFO", "IMAGE_BYTES", "IMAGES", "METADATA", "METADATA_OUTPUTS", "MODELS_CONFIG",
    "SERVING_DEFAULT", "SIGNATURE_IO", "ServerUnavailable", "ServingError", "batching_parameters_text",
    "build_predict_json", "config_blocks", "decode_png", "derain_files_via_server", "derain_tiled", "encode_png",
    "make_predict_request", "model_config_block", "models_config_text", "next_version", "parse_predict_json",
    "parse_predict_response", "predict_grpc", "predict_rest", "predict_url", "read_export_info", "rest_url",
    "server_command_lines", "server_metadata", "server_runner", "serving_root", "update_models_config",
    "write_server_config",
    *_LAZY])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
