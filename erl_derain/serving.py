"""SavedModel export for TF Serving, and REST / gRPC clients for it.

Layout written by ``export_saved_model`` (``erl-derain export --model_dir=... --export_base=exports/erlnet``)::

    exports/                            the server's model root (export_base's parent folder)
        erlnet/                         export_base = the model's base_path; model name = folder name
            1/  2/ ...                  one SavedModel per version (TF Serving loads integer folders)
                assets.extra/erl_derain.json   method, training flags, version, signatures (plain JSON)
        memd/ ...                       other models exported next to it
        models.config                   --model_config_file: one config block per model,
                                        base_path = the absolute export_base
        models.docker.config            the same for the container: base_path = /models/<folder>
        batching_parameters.txt         --batching_parameters_file (written once; yours to tune)

Each export adds or replaces its own model's block in both config files (serving the version just
exported: ``model_version_policy { specific { versions: N } }``) and keeps the other models'
blocks verbatim, so one server serves every model of the folder.

A version is written to a hidden temporary folder inside ``<export_base>`` and renamed into place,
so a polling server never sees a half-written version; an existing version is refused unless
``overwrite=True`` (a server that already loaded that version keeps serving the old one: export a
new version instead). The graph is the inference network only (``trainer.inference_model()``
called with ``training=False``: no clean autoencoder, no optimizer slots); the SavedModel's
variables are exactly that model's.

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
        sends upright pixels for rotated photos.
    ``metadata``
        no input -> ``method``, ``flags_json`` (the training flags, JSON) and ``version``: string
        scalars. Reachable from Python (``tf.saved_model.load``) and over gRPC; TF Serving's REST
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

import base64
import io
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import uuid

import numpy as np

# Signature, input and output names (the serving API; keep in sync with the docstring above).
SERVING_DEFAULT = "serving_default"
DERAIN_IMAGE = "derain_image"
METADATA = "metadata"
IMAGES = "images"
DERAINED = "derained"
IMAGE_BYTES = "image_bytes"
DERAINED_PNG_BYTES = "derained_png_bytes"
METADATA_OUTPUTS = ("method", "flags_json", "version")
SIGNATURE_IO = {SERVING_DEFAULT: ((IMAGES,), (DERAINED,)),
                DERAIN_IMAGE: ((IMAGE_BYTES,), (DERAINED_PNG_BYTES,)),
                METADATA: ((), METADATA_OUTPUTS)}

MODELS_CONFIG = "models.config"
DOCKER_MODELS_CONFIG = "models.docker.config"
BATCHING_PARAMETERS = "batching_parameters.txt"
EXPORT_INFO = os.path.join("assets.extra", "erl_derain.json")
DOCKER_MODELS_ROOT = "/models"

# Values in images beyond [0, 1] by more than this are refused (0-255 pixels sent as floats).
RANGE_TOLERANCE = 0.01

# File signatures of the formats tf.io.decode_image reads (WebP: "RIFF" + size + "WEBP").
_MAGIC_PREFIXES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM")


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _make_module(model, multiple: int, method: str, flags_json: str, version: int):
    """The tf.Module that is saved: the model plus the three signatures (built lazily so that the
    client half of this module does not import TensorFlow)."""
    import tensorflow as tf

    from erl_derain.inference import apply_padded

    class DerainModule(tf.Module):
        def __init__(self):
            super().__init__(name="erl_derain")
            self.model = model
            self.multiple = int(multiple)

        def _run(self, images):
            return apply_padded(lambda x: self.model(x, training=False), images, self.multiple)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.float32, name=IMAGES)])
        def serve(self, images):
            # The signature fixes dtype and rank for Python callers, but TF Serving feeds whatever
            # arrives (and Grappler folds a rank check against the declared rank): check what the
            # network relies on, with messages naming the input. The shape is padded with -1 so that
            # reading it cannot fail on a tensor of lower rank.
            shape = tf.shape(images)
            padded = tf.concat([shape, tf.fill([4], -1)], 0)
            n, h, w, c = padded[0], padded[1], padded[2], padded[3]
            shape_check = tf.debugging.Assert(tf.logical_and(tf.equal(c, 3), tf.equal(padded[4], -1)), [
                tf.strings.format("images: expected 3 channels (RGB) in a [batch, height, width, 3] tensor, "
                                  "got shape {}", shape)])
            # The range reductions run only after the shape check (Grappler may fold their axes from
            # the declared rank 4; on a tensor of another rank they would fail first, unnamed).
            with tf.control_dependencies([shape_check]):
                lo, hi = tf.reduce_min(images), tf.reduce_max(images)
            checks = [
                shape_check,
                tf.debugging.Assert(tf.logical_or(tf.equal(n, 0), tf.logical_and(h > 0, w > 0)), [
                    tf.strings.format("images: height and width must be positive, got shape {}", shape)]),
                tf.debugging.Assert(tf.logical_or(tf.equal(tf.size(images), 0), tf.logical_and(
                    lo >= -RANGE_TOLERANCE, hi <= 1 + RANGE_TOLERANCE)), [
                    tf.strings.format("images: values must lie in [0, 1] (float RGB; divide 8-bit pixels by 255), "
                                      "got min {} max {}", (lo, hi))]),
            ]
            with tf.control_dependencies(checks):
                images = tf.ensure_shape(tf.identity(images), [None, None, None, 3])
            # An empty batch is answered without running the network (reflect padding needs pixels).
            derained = tf.cond(n > 0, lambda: self._run(images), lambda: tf.zeros_like(images))
            return {DERAINED: derained}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
        def derain_image(self, image_bytes):
            n = tf.shape(image_bytes)[0]

            def one(args):
                data, index = args
                head = tf.strings.substr(tf.strings.join([data, tf.constant(b"\0" * 12)]), 0, 12)
                webp = tf.equal(tf.strings.substr(head, 0, 4), b"RIFF") & tf.equal(tf.strings.substr(head, 8, 4),
                                                                                    b"WEBP")
                known = webp
                for magic in _MAGIC_PREFIXES:
                    known = known | tf.equal(tf.strings.substr(head, 0, len(magic)), magic)
                check = tf.debugging.Assert(known, [tf.strings.format(
                    "image_bytes[{}]: not a JPEG, PNG, GIF, BMP or WebP file (unrecognised header; send the "
                    "encoded file, base64 in a b64 object over REST)", index)])
                with tf.control_dependencies([check]):
                    # float32 straight from the decoder (16-bit PNGs at full precision); WebP decodes
                    # only to uint8.
                    image = tf.cond(webp, lambda: tf.image.convert_image_dtype(tf.io.decode_image(
                        data, channels=3, expand_animations=False, name="decode_image_bytes"), tf.float32),
                        lambda: tf.io.decode_image(data, channels=3, dtype=tf.float32, expand_animations=False,
                                                   name="decode_image_bytes"))
                image = tf.ensure_shape(image, [None, None, 3])
                derained = self._run(image[None])[0]
                pixels = tf.cast(tf.floor(derained * 255.0 + 0.5), tf.uint8)
                return tf.io.encode_png(pixels)

            pngs = tf.map_fn(one, (image_bytes, tf.range(n)), fn_output_signature=tf.TensorSpec([], tf.string),
                             parallel_iterations=1)
            return {DERAINED_PNG_BYTES: pngs}

        @tf.function(input_signature=[])
        def metadata(self):
            return {"method": tf.constant(method), "flags_json": tf.constant(flags_json),
                    "version": tf.constant(str(version))}

    return DerainModule()


def next_version(export_base: str) -> int:
    """1 + the largest integer folder in ``export_base`` (1 when there is none)."""
    if not os.path.isdir(export_base):
        return 1
    versions = [int(d) for d in os.listdir(export_base)
                if re.fullmatch(r"\d+", d) and os.path.isdir(os.path.join(export_base, d))]
    return max(versions, default=0) + 1


def _text_proto_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_CONFIG_HEADER = (
    "# TF Serving --model_config_file (ModelServerConfig text proto) for the models in this folder,\n"
    "# maintained by `erl-derain export`: each export (re)writes its model's config block, serving the\n"
    "# version just exported, and keeps the other blocks as they are. To follow the newest version\n"
    "# automatically, use  model_version_policy { latest { num_versions: 1 } }  in a block instead.\n")


def model_config_block(model_name: str, base_path: str, version: int) -> str:
    """One ``config { ... }`` entry of a ``ModelServerConfig``'s ``model_config_list``."""
    return ("  config {\n"
            f"    name: {_text_proto_string(model_name)}\n"
            f"    base_path: {_text_proto_string(base_path)}\n"
            '    model_platform: "tensorflow"\n'
            "    model_version_policy {\n"
            "      specific {\n"
            f"        versions: {int(version)}\n"
            "      }\n"
            "    }\n"
            "  }\n")


def models_config_text(blocks) -> str:
    """A ``--model_config_file`` holding ``blocks`` (``model_config_block`` texts)."""
    return _CONFIG_HEADER + "model_config_list {\n" + "".join(blocks) + "}\n"


def _config_blocks(text: str) -> list[tuple[str, str]]:
    """``(name, raw text)`` of each ``config { ... }`` block inside ``model_config_list`` (comments
    and quoted strings skipped when matching braces); ``ValueError`` if the text is not such a file."""
    outer = re.search(r"\bmodel_config_list\s*:?\s*\{", text)
    if outer is None:
        raise ValueError("no model_config_list { ... }")
    blocks, start, depth, i, n = [], None, 1, outer.end(), len(text)
    while i < n and depth > 0:
        ch = text[i]
        if ch == "#":
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if ch == "{":
            if depth == 1:
                m = re.search(r"\bconfig\s*:?\s*$", text[max(0, i - 40):i])
                if m is None:
                    raise ValueError(f"unexpected block at offset {i}")
                start = max(0, i - 40) + m.start()
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 1 and start is not None:
                raw = text[start:i + 1]
                name = re.search(r'\bname\s*:\s*"((?:[^"\\]|\\.)*)"', raw)
                name = re.sub(r"\\(.)", r"\1", name.group(1)) if name else ""  # unescape \" and \\
                blocks.append((name, "  " + raw.strip() + "\n"))
                start = None
        i += 1
    if depth != 0:
        raise ValueError("unbalanced braces")
    return blocks


def update_models_config(path: str, model_name: str, base_path: str, version: int) -> None:
    """Add or replace ``model_name``'s block in the ``--model_config_file`` at ``path``, keeping the
    other models' blocks verbatim (an unreadable file is kept as ``<path>.bak`` and replaced)."""
    blocks = []
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        try:
            blocks = [(name, raw) for name, raw in _config_blocks(text) if name != model_name]
        except ValueError as e:
            print(f"warning: {path} is not a model_config_list file ({e}): kept as {path}.bak and replaced",
                  file=sys.stderr)
            shutil.copyfile(path, path + ".bak")
            blocks = []
    blocks.append((model_name, model_config_block(model_name, base_path, version)))
    blocks.sort(key=lambda b: b[0])
    _atomic_write_text(path, models_config_text(raw for _, raw in blocks))


def batching_parameters_text(max_batch_size: int = 4, batch_timeout_micros: int = 5000, num_batch_threads: int = 2,
                             max_enqueued_batches: int = 16) -> str:
    """TF Serving's ``--batching_parameters_file`` (a ``BatchingParameters`` text proto)."""
    return (
        "# TF Serving --batching_parameters_file (BatchingParameters text proto), used with --enable_batching.\n"
        "# De-raining is compute bound: one 512x512 image takes ~0.1-1 s and every CPU core, so batches stay\n"
        "# small (images of a batch are held in memory together), the timeout is short next to an\n"
        "# inference, and the queue is bounded so that an overloaded server answers UNAVAILABLE instead of\n"
        "# piling up requests. num_batch_threads = batches run in parallel: 1 per GPU; on CPU 1-2 (each\n"
        "# run already uses all cores). Batched float requests must share one image size; derain_image's\n"
        "# encoded images may differ.\n"
        f"max_batch_size {{ value: {int(max_batch_size)} }}\n"
        f"batch_timeout_micros {{ value: {int(batch_timeout_micros)} }}\n"
        f"num_batch_threads {{ value: {int(num_batch_threads)} }}\n"
        f"max_enqueued_batches {{ value: {int(max_enqueued_batches)} }}\n")


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def server_command_lines(export_base: str) -> dict:
    """The ``tensorflow_model_server`` and ``docker run`` command lines serving the models next to
    ``export_base`` (the files written in its parent folder)."""
    root = os.path.dirname(os.path.abspath(os.fspath(export_base)))
    timeout = "--rest_api_timeout_in_ms=300000"
    return {
        "tensorflow_model_server": (f"tensorflow_model_server --rest_api_port=8501 --port=8500 "
                                    f"--model_config_file={root}/{MODELS_CONFIG} {timeout}"),
        "docker": (f"docker run --rm -p 8501:8501 -p 8500:8500 -v {root}:{DOCKER_MODELS_ROOT} tensorflow/serving "
                   f"--model_config_file={DOCKER_MODELS_ROOT}/{DOCKER_MODELS_CONFIG} {timeout}"),
        "batching": f"--enable_batching --batching_parameters_file={root}/{BATCHING_PARAMETERS}",
        "batching_docker": f"--enable_batching --batching_parameters_file={DOCKER_MODELS_ROOT}/{BATCHING_PARAMETERS}",
    }


def write_server_config(export_base: str, model_name: str, version: int) -> str:
    """Next to ``export_base`` (in its parent folder, the server's model root): add or replace
    ``model_name``'s entry in ``models.config`` (base_path = the absolute export_base) and
    ``models.docker.config`` (base_path = /models/<export_base's folder name>, for the parent mounted
    at /models), and write ``batching_parameters.txt`` unless it exists. Returns the parent folder."""
    export_base = os.path.abspath(os.fspath(export_base))
    root = os.path.dirname(export_base)
    with _locked(os.path.join(root, ".models.config.lock")):
        update_models_config(os.path.join(root, MODELS_CONFIG), model_name, export_base, version)
        update_models_config(os.path.join(root, DOCKER_MODELS_CONFIG), model_name,
                             f"{DOCKER_MODELS_ROOT}/{os.path.basename(export_base)}", version)
        batching = os.path.join(root, BATCHING_PARAMETERS)
        if not os.path.exists(batching):
            _atomic_write_text(batching, batching_parameters_text())
    return root


class _locked:
    """An exclusive ``flock`` on ``path`` (no-op where fcntl is missing): two exports of different
    models into one folder must not lose each other's models.config entries."""

    def __init__(self, path: str):
        self.path, self.fd = path, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock


def export_saved_model(model, multiple: int, export_base: str, version: int | None = None,
                       metadata: dict | None = None, *, overwrite: bool = False, model_name: str | None = None,
                       server_config: bool = True) -> str:
    """Write the SavedModel ``<export_base>/<version>/`` and return its path.

    ``model``: a Keras model NHWC float32 [0, 1] -> same (``trainer.inference_model()``);
    ``multiple``: the size the network needs (``trainer.pad_multiple``); ``version``: default the
    next integer; an existing version raises ``FileExistsError`` unless ``overwrite``.
    ``metadata``: ``{"method": ..., "config": {flags}}``, served by the ``metadata`` signature and
    stored in ``assets.extra/erl_derain.json``. ``server_config``: also update the server files in
    export_base's parent folder (``write_server_config``): ``models.config`` /
    ``models.docker.config`` serve this version under ``model_name`` (default: the export_base
    folder's name); ``batching_parameters.txt`` is written if missing."""
    import tensorflow as tf

    export_base = os.path.abspath(os.fspath(export_base))
    model_name = model_name or os.path.basename(export_base)
    version = next_version(export_base) if version is None else int(version)
    if version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version}")
    path = os.path.join(export_base, str(version))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists: choose another --version, or leave it out for the next one "
                              f"({next_version(export_base)})")
    metadata = dict(metadata or {})
    method = str(metadata.get("method", ""))
    flags_json = json.dumps(metadata.get("config", {}), sort_keys=True, default=str)
    os.makedirs(export_base, exist_ok=True)
    module = _make_module(model, multiple, method, flags_json, version)
    # Hidden, non-integer name: TF Serving's version poller ignores it.
    tmp = os.path.join(export_base, f".tmp-{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tf.saved_model.save(module, tmp, signatures={
            SERVING_DEFAULT: module.serve.get_concrete_function(),
            DERAIN_IMAGE: module.derain_image.get_concrete_function(),
            METADATA: module.metadata.get_concrete_function()})
        info = {"method": method, "config": metadata.get("config", {}), "version": version,
                "pad_multiple": int(multiple), "model_name": model_name,
                "signatures": {k: {"inputs": list(i), "outputs": list(o)} for k, (i, o) in SIGNATURE_IO.items()}}
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, EXPORT_INFO), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True, default=str)
        _move_into_place(tmp, path, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if server_config:
        write_server_config(export_base, model_name, version)
    return path


def _move_into_place(tmp: str, path: str, overwrite: bool) -> None:
    """Rename the finished export to its version folder (``os.rename`` refuses a non-empty target,
    so two concurrent exports of one version cannot both succeed)."""
    old = None
    if overwrite and os.path.exists(path):
        old = f"{os.path.dirname(path)}/.old-{os.path.basename(path)}-{uuid.uuid4().hex[:8]}"
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError as e:
        if old is not None:
            os.rename(old, path)
        if os.path.exists(path):
            raise FileExistsError(f"{path} appeared while exporting (another export?): not replaced") from e
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_export_info(export_dir: str) -> dict:
    """``assets.extra/erl_derain.json`` of one exported version: method, config (training flags),
    version, pad_multiple, model_name, signatures. Plain JSON: no TensorFlow needed."""
    with open(os.path.join(export_dir, EXPORT_INFO)) as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------------


class ServingError(RuntimeError):
    """The server refused or failed a request; the message is the server's."""


class ServerUnavailable(ServingError, ConnectionError):
    """No server answers at the address (refused connection, unknown host, gRPC UNAVAILABLE)."""


def encode_png(image: np.ndarray) -> bytes:
    """8-bit (or 16-bit, for uint16 arrays) PNG bytes of an HxWx3 image: float in [0, 1] is
    quantised as the ``derain_image`` signature does (``floor(255 x + 0.5)``)."""
    import cv2

    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16):
        image = np.floor(np.clip(image.astype(np.float32), 0, 1) * 255.0 + 0.5).astype(np.uint8)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """HxWx3 uint8 RGB of PNG bytes (what ``derain_image`` returns)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _default_signature(images, image_bytes, signature):
    if images is not None and image_bytes is not None:
        raise ValueError("give images (float32 NHWC in [0, 1]) or image_bytes (encoded files), not both")
    if signature is None:
        signature = DERAIN_IMAGE if image_bytes is not None else SERVING_DEFAULT if images is not None else METADATA
    inputs = {}
    if images is not None:
        images = np.asarray(images, np.float32)
        if images.ndim == 3:
            images = images[None]
        inputs[IMAGES] = images
    if image_bytes is not None:
        inputs[IMAGE_BYTES] = [image_bytes] if isinstance(image_bytes, (bytes, bytearray)) else list(image_bytes)
    return signature, inputs


def _json_value(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, bytearray)):
        return [{"b64": base64.b64encode(v).decode("ascii")} for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def build_predict_json(signature: str, inputs: dict, use: str = "instances") -> dict:
    """The body of TF Serving's REST ``:predict``: row format (``use="instances"``: one object per
    batch element) or columnar (``use="inputs"``). Bytes become ``{"b64": ...}``."""
    if use not in ("instances", "inputs"):
        raise ValueError(f"use must be 'instances' or 'inputs', got {use!r}")
    body = {"signature_name": signature}
    if use == "inputs" or not inputs:
        body["inputs"] = {k: _json_value(v) for k, v in inputs.items()}
        return body
    sizes = {len(v) for v in inputs.values()}
    if len(sizes) != 1:
        raise ValueError(f"inputs have different batch sizes: {sizes}")
    body["instances"] = [{k: _json_value(v[i]) for k, v in inputs.items()} for i in range(sizes.pop())]
    return body


def _from_json(value):
    """JSON value -> Python: ``{"b64": ...}`` objects become bytes, numeric lists float32 arrays,
    other lists stay lists (recursively)."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        leaf = value
        while isinstance(leaf, list) and leaf:
            leaf = leaf[0]
        if isinstance(leaf, (dict, str)):
            return [_from_json(v) for v in value]
        return np.asarray(value, np.float32)
    return value


def parse_predict_json(body: dict, signature: str) -> dict:
    """TF Serving's REST ``:predict`` answer -> ``{output name: numpy array | list of bytes | str}``.

    Row answers (``{"predictions": [...]}``) and columnar ones (``{"outputs": ...}``) both name
    their outputs only when there are several; the names of a single output come from the known
    signatures (``"output"`` for others)."""
    if "error" in body:
        raise ServingError(body["error"])
    outputs = SIGNATURE_IO.get(signature, ((), ()))[1]
    if "predictions" in body:
        rows = body["predictions"]
        if rows and isinstance(rows[0], dict) and set(rows[0]) != {"b64"}:
            return {k: _from_json([r[k] for r in rows]) for k in rows[0]}
        return {outputs[0] if len(outputs) == 1 else "output": _from_json(rows)}
    if "outputs" in body:
        out = body["outputs"]
        if isinstance(out, dict) and set(out) != {"b64"}:
            return {k: _from_json(v) for k, v in out.items()}
        return {outputs[0] if len(outputs) == 1 else "output": _from_json(out)}
    raise ServingError(f"unexpected answer (neither 'predictions' nor 'outputs'): {str(body)[:200]}")


def rest_url(server: str) -> str:
    """``host:port`` or ``http(s)://host:port`` -> the base URL."""
    server = server.rstrip("/")
    return server if re.match(r"https?://", server) else f"http://{server}"


def predict_url(server: str, model_name: str, version: int | None = None) -> str:
    version_part = f"/versions/{int(version)}" if version is not None else ""
    return f"{rest_url(server)}/v1/models/{model_name}{version_part}:predict"


def predict_rest(url: str, model_name: str, images=None, image_bytes=None, *, signature: str | None = None,
                 use: str = "instances", version: int | None = None, timeout: float = 300.0) -> dict:
    """One REST ``:predict`` call to TF Serving at ``url`` (``host:8501`` or ``http://host:8501``).

    ``images``: float32 [batch, H, W, 3] (or one HxWx3) in [0, 1] -> ``serving_default``;
    ``image_bytes``: encoded files (bytes or a list of them) -> ``derain_image``. Returns
    ``{output name: value}``: ``derained`` float32 array, ``derained_png_bytes`` list of PNG bytes
    (``decode_png``). Server errors raise ``ServingError`` with the server's message; unreachable
    servers ``ServerUnavailable`` (also a ``ConnectionError``); a slow answer ``TimeoutError``."""
    signature, inputs = _default_signature(images, image_bytes, signature)
    body = build_predict_json(signature, inputs, "inputs" if signature == METADATA else use)
    request = urllib.request.Request(predict_url(url, model_name, version), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")
        try:
            message = json.loads(text).get("error", text)
        except ValueError:
            message = text
        raise ServingError(f"HTTP {e.code} from {e.url}: {message}") from None
    except urllib.error.URLError as e:
        raise ServerUnavailable(f"cannot reach TF Serving's REST API at {rest_url(url)}: {e.reason}") from None
    return parse_predict_json(answer, signature)


def _serving_api():
    try:
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError as e:
        raise ImportError(f"gRPC needs tensorflow-serving-api ({e}): pip install 'erl_derain[serving]' "
                          "(or use the REST API: protocol='rest', port 8501)") from e
    return grpc, predict_pb2, prediction_service_pb2_grpc


def make_predict_request(model_name: str, inputs: dict, signature: str, version: int | None = None):
    """A ``tensorflow.serving.PredictRequest`` with each input as a TensorProto."""
    import tensorflow as tf

    _, predict_pb2, _ = _serving_api()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        if name == IMAGE_BYTES:
            value = np.array([bytes(v) for v in value], dtype=object)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def parse_predict_response(response) -> dict:
    """``PredictResponse`` -> ``{output name: numpy array | list of bytes | str}``."""
    import tensorflow as tf

    out = {}
    for name, proto in response.outputs.items():
        value = tf.make_ndarray(proto)
        if value.dtype == object:
            value = value.tolist() if value.ndim else value.item().decode("utf-8", "replace")
        out[name] = value
    return out


def predict_grpc(host_port: str, model_name: str, images=None, image_bytes=None, *, signature: str | None = None,
                 version: int | None = None, timeout: float = 300.0) -> dict:
    """One gRPC ``Predict`` call to TF Serving at ``host_port`` (default port 8500); arguments and
    result as ``predict_rest``. Needs ``tensorflow-serving-api`` (``erl_derain[serving]``)."""
    grpc, _, prediction_service_pb2_grpc = _serving_api()
    signature, inputs = _default_signature(images, image_bytes, signature)
    request = make_predict_request(model_name, inputs, signature, version)
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(host_port, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as e:
            error = ServerUnavailable if e.code() == grpc.StatusCode.UNAVAILABLE else ServingError
            raise error(f"gRPC {e.code().name} from {host_port}: {e.details()}") from None
    return parse_predict_response(response)


def _predict(protocol: str):
    if protocol == "rest":
        return predict_rest
    if protocol == "grpc":
        return predict_grpc
    raise ValueError(f"protocol must be 'rest' or 'grpc', got {protocol!r}")


def server_metadata(server: str, model_name: str, protocol: str = "grpc", version: int | None = None,
                    timeout: float = 60.0) -> dict:
    """The ``metadata`` signature of a served model: ``{"method", "flags_json", "version"}`` strings.
    gRPC only: TF Serving's REST API cannot call a signature without inputs (and neither protocol
    can under ``--enable_batching``; see the module docstring)."""
    if protocol == "rest":
        raise ServingError("TF Serving's REST API cannot call the input-less 'metadata' signature (\"Failed to get "
                           "input map for signature\"): use protocol='grpc' (port 8500), or read "
                           "assets.extra/erl_derain.json in the export (read_export_info)")
    out = _predict(protocol)(server, model_name, signature=METADATA, version=version, timeout=timeout)
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in out.items()}


# What tf.io.decode_image reads as is: format names as Pillow reports them.
_SERVER_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")


def _payload(data: bytes, image: np.ndarray, meta) -> tuple[bytes, str]:
    """What to send to ``derain_image``: the file's own bytes when the server's decoder reads them
    as ``image_io.read_image`` did (``image``; JPEG decoders may differ by a level of rounding),
    otherwise a lossless PNG of those pixels (EXIF-rotated photos, CMYK JPEGs, TIFFs)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        mode = im.mode
    if meta.orientation == 1 and meta.format in _SERVER_FORMATS and mode not in ("CMYK", "YCbCr", "LAB", "I", "F"):
        return data, "original bytes"
    return encode_png(image), "upright PNG" if meta.orientation != 1 else "PNG"


def _output_path(path: str, output_dir: str, output_format: str) -> str:
    stem, ext = os.path.splitext(os.path.basename(path))
    return os.path.join(output_dir, stem + (ext if output_format == "same" else "." + output_format.lstrip(".")))


def derain_files_via_server(server: str, model_name: str, files, output_dir: str, *, protocol: str = "rest",
                            overwrite: bool = False, output_format: str = "png", version: int | None = None,
                            tile: int = 0, tile_overlap: int = 32, quality: int = 95,
                            timeout: float = 600.0) -> tuple[int, int, list[tuple[str, str]]]:
    """De-rain photo files on a TF Serving server; returns ``(written, skipped, failures)`` with
    ``failures`` a list of ``(path, message)`` (one bad file does not stop the others).

    Each photo is read locally (``image_io.read_image``: validates it and records grey / alpha /
    16 bits / orientation) and sent to ``derain_image`` as its original bytes (or as a lossless PNG
    of the upright pixels when the server would decode them differently: EXIF-rotated photos,
    CMYK JPEGs, TIFFs); the PNG that comes back is written like ``erl-derain derain`` writes
    (``image_io.write_image``: grey back to grey, alpha kept, the output format from
    ``output_format``: an extension or ``"same"``). 16-bit photos go through ``serving_default``
    (float32, no 8-bit step). With ``tile > 0``, photos larger than ``tile`` on a side are sent as
    overlapping float tiles to ``serving_default`` and blended here (``inference.derain_image``),
    which bounds the server's memory. ``server``: ``host:port`` (REST 8501 or gRPC 8500).
    Raises ``ServerUnavailable`` (a ``ConnectionError``) at once when no server answers, and
    ``ImportError`` for gRPC without tensorflow-serving-api."""
    from erl_derain.data import image_io

    predict = _predict(protocol)
    if protocol == "grpc":
        _serving_api()  # a missing package is one clear error, not one failure per file
    os.makedirs(output_dir, exist_ok=True)
    written, skipped, failures = 0, 0, []
    for path in files:
        path = os.fspath(path)
        out_path = _output_path(path, output_dir, output_format)
        if os.path.exists(out_path) and not overwrite:
            skipped += 1
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()
            image, meta = image_io.read_image(path)
            image_io.check_writable(out_path, meta)
            h, w = image.shape[:2]
            if tile > 0 and max(h, w) > tile:
                result, route = _derain_tiled(predict, server, model_name, image, tile, tile_overlap, version,
                                              timeout), "float tiles"
            elif meta.bit_depth == 16:
                result = predict(server, model_name, images=image[None], version=version, timeout=timeout)[DERAINED][0]
                route = "float32"
            else:
                payload, route = _payload(data, image, meta)
                png = predict(server, model_name, image_bytes=[payload], version=version,
                              timeout=timeout)[DERAINED_PNG_BYTES][0]
                result = decode_png(png).astype(np.float32) / 255.0
            del image
            if result.shape[:2] != (h, w):
                raise ServingError(f"the server returned a {result.shape[1]}x{result.shape[0]} image for a "
                                   f"{w}x{h} input")
            image_io.write_image(out_path, result, meta, quality=quality)
            written += 1
            print(f"  {path} ({w}x{h}, {route} via {protocol}) -> {out_path}", flush=True)
        except ServerUnavailable:
            raise  # no server: every other file would fail the same way
        except Exception as e:  # one bad file must not stop the others
            failures.append((path, str(e)))
            print(f"  FAILED {path}: {e}", file=sys.stderr, flush=True)
    return written, skipped, failures


def _derain_tiled(predict, server, model_name, image, tile, overlap, version, timeout) -> np.ndarray:
    import tensorflow as tf

    from erl_derain.inference import derain_image

    def run(batch):  # NHWC tensor -> NHWC tensor, on the server (which pads to its multiple itself)
        out = predict(server, model_name, images=np.asarray(batch, np.float32), version=version, timeout=timeout)
        return tf.constant(out[DERAINED])

    return derain_image(run, image, 1, tile=tile, overlap=overlap)
