"""SavedModel export for TF Serving: ``export_saved_model`` writes ``<export_base>/<version>/``
holding ``DerainModule`` (an ``inference.InferenceModel`` and the three signatures described in
the ``erl_derain.serving`` docstring) plus ``assets.extra/erl_derain.json``, and updates the
server config files next to it (``server_config.write_server_config``).

A version is written to a hidden temporary folder inside ``<export_base>`` and renamed into place,
so a polling server never sees a half-written version; an existing version is refused unless
``overwrite=True`` (a server that already loaded that version keeps serving the old one: export a
new version instead).

``export_base`` may be a file-system URL (``gs://bucket/models/derain``), which has no atomic
folder rename (``erl_derain.fileio``): the version is then written to a local temporary folder and
copied into ``<export_base>/<version>/`` file by file, ``saved_model.pb`` last, so that a loader
that finds it finds the rest in place; a server polling the base may see the version folder before
it is complete (and fail to load it until then), and an interrupted copy leaves a version without
``saved_model.pb`` (export again with ``--version=<that version> --overwrite``). With ``overwrite``
the old version's files are removed before the copy. The graph is the inference network only (``trainer.inference_model()``
called with ``training=False``: no clean autoencoder, no optimizer slots); the SavedModel's
variables are exactly that model's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid

import tensorflow as tf

from erl_derain import fileio
from erl_derain.data import image_io
from erl_derain.inference import InferenceModel, as_inference_model
from erl_derain.serving.layout import (DERAIN_IMAGE, DERAINED, DERAINED_PNG_BYTES, EXPORT_INFO, IMAGE_BYTES, IMAGES,
                                       METADATA, SERVING_DEFAULT, SIGNATURE_IO, version_folder)
from erl_derain.serving.server_config import serving_root as model_root
from erl_derain.serving.server_config import write_server_config

# The file a SavedModel loader opens first: copied last into a version folder on a file-system URL.
SAVED_MODEL_FILE = "saved_model.pb"

# Values in images beyond [0, 1] by more than this are refused (0-255 pixels sent as floats).
RANGE_TOLERANCE = 0.01

# File signatures of the formats tf.io.decode_image reads (WebP: "RIFF" + size + "WEBP").
_MAGIC_PREFIXES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM")


def _declared_pixels(data, head):
    """``(width, height)`` (int64 scalars) that the header of encoded image bytes declares, read without
    decoding (as ``image_io.declared_size``): PNG IHDR, GIF screen, BMP info header, WebP VP8 / VP8L /
    VP8X chunk, JPEG SOF (``tf.image.extract_jpeg_shape``); (0, 0) for anything else."""
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(tf.strings.join([data, tf.constant(b"\0" * 32)]), 0, 32),
                                 tf.uint8), tf.int64)

    def le(start, n):
        return sum(b[start + k] * (1 << (8 * k)) for k in range(n))

    def be(start, n):
        return sum(b[start + k] * (1 << (8 * (n - 1 - k))) for k in range(n))

    def signed32(v):
        v = tf.where(v >= 2 ** 31, v - 2 ** 32, v)
        return tf.abs(v)

    def prefix(magic, start=0):
        return tf.equal(tf.strings.substr(head, start, len(magic)), magic)

    zero = tf.constant(0, tf.int64)
    chunk = tf.strings.substr(tf.strings.join([data, tf.constant(b"\0" * 16)]), 12, 4)
    vp8l_bits = le(21, 4)
    cases = [
        (prefix(b"\x89PNG\r\n\x1a\n"), lambda: (be(16, 4), be(20, 4))),
        (prefix(b"GIF8"), lambda: (le(6, 2), le(8, 2))),
        (prefix(b"BM") & tf.equal(le(14, 4), 12), lambda: (le(18, 2), le(20, 2))),
        (prefix(b"BM"), lambda: (signed32(le(18, 4)), signed32(le(22, 4)))),
        (tf.equal(chunk, b"VP8X"), lambda: (1 + le(24, 3), 1 + le(27, 3))),
        (tf.equal(chunk, b"VP8 "), lambda: (tf.bitwise.bitwise_and(le(26, 2), 0x3FFF),
                                             tf.bitwise.bitwise_and(le(28, 2), 0x3FFF))),
        (tf.equal(chunk, b"VP8L"), lambda: (tf.bitwise.bitwise_and(vp8l_bits, 0x3FFF) + 1,
                                             tf.bitwise.bitwise_and(tf.bitwise.right_shift(vp8l_bits, 14), 0x3FFF) + 1)),
    ]
    w, h = zero, zero
    for condition, size in reversed(cases):
        sw, sh = size()
        w, h = tf.where(condition, sw, w), tf.where(condition, sh, h)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data, name="decode_image_bytes_size"), tf.int64)
        return shape[1], shape[0]

    return tf.cond(prefix(b"\xff\xd8\xff"), jpeg, lambda: (w, h))


class DerainModule(tf.Module):
    """What is saved: ``model`` (an ``InferenceModel``: padding, network, cropping, clipping) and the
    three signatures ``serve`` (``serving_default``), ``derain_image`` and ``metadata``."""

    def __init__(self, model: InferenceModel, method: str, flags_json: str, version: int,
                 max_pixels: int | None = None, precision: str = "float32"):
        super().__init__(name="erl_derain")
        self.model = model
        self._method, self._flags_json, self._version = str(method), str(flags_json), str(version)
        self._precision = str(precision)
        self._max_pixels = int(image_io.MAX_PIXELS if max_pixels is None else max_pixels)
        if self._max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive number of pixels, got {self._max_pixels}")

    def _run(self, images):
        return self.model(images)

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
                width, height = _declared_pixels(data, head)
                # In float64: two 32-bit sides (a PNG may declare 2**32-1) overflow an int64 product.
                pixels = tf.cast(width, tf.float64) * tf.cast(height, tf.float64)
                size_check = tf.debugging.Assert(pixels <= float(self._max_pixels), [tf.strings.format(
                    "image_bytes[{}]: image too large: {} x {} pixels (this export's limit is "
                    f"{self._max_pixels} pixels, --max_pixels at export)", (index, width, height))])
            with tf.control_dependencies([check, size_check]):
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
        return {"method": tf.constant(self._method), "flags_json": tf.constant(self._flags_json),
                "version": tf.constant(self._version), "precision": tf.constant(self._precision)}


def export_saved_model(model, export_base: str, *legacy, version: int | None = None, metadata: dict | None = None,
                       overwrite: bool = False, model_name: str | None = None, server_config: bool = True,
                       serving_root: str | None = None, max_pixels: int | None = None) -> str:
    """Write the SavedModel ``<export_base>/<version>/`` and return its path.

    ``model``: an ``InferenceModel`` (``InferenceModel(trainer.inference_model(),
    trainer.pad_multiple)``; a bare network with a ``pad_multiple`` attribute is wrapped);
    ``version``: default the next integer; an existing version raises ``FileExistsError`` unless
    ``overwrite``. ``metadata``: ``{"method": ..., "config": {flags}, "precision": "float32" or
    "bfloat16"}``, served by the ``metadata`` signature and stored in ``assets.extra/erl_derain.json``.
    ``server_config``: also update the server files in the model root ``serving_root`` (default: export_base's parent folder; it must
    hold export_base; ``write_server_config``): ``models.config`` / ``models.docker.config`` serve
    this version under ``model_name`` (default: the export_base folder's name);
    ``batching_parameters.txt`` is written if missing. ``max_pixels``: the ``derain_image``
    signature refuses files declaring more pixels (default ``image_io.MAX_PIXELS``, 100 MP).

    Transition: the form before the multiple moved into ``InferenceModel``,
    ``export_saved_model(network, multiple, export_base, [version, [metadata]], ...)``, is still
    accepted."""
    multiple = None
    if legacy or (isinstance(export_base, int) and not isinstance(export_base, bool)):
        if isinstance(export_base, bool) or not isinstance(export_base, int) or len(legacy) > 3:
            raise TypeError("export_saved_model(model, export_base, *, version=None, metadata=None, ...): "
                            "version and metadata are keyword arguments")
        multiple, export_base, rest = export_base, legacy[0] if legacy else None, legacy[1:]
        if export_base is None:
            raise TypeError("export_saved_model(network, multiple, export_base, ...): export_base is missing")
        if (rest and version is not None) or (len(rest) > 1 and metadata is not None):
            raise TypeError("export_saved_model: version or metadata given twice")
        version = rest[0] if rest else version
        metadata = rest[1] if len(rest) > 1 else metadata
    model = as_inference_model(model, multiple)
    if server_config:
        serving_root, _ = model_root(export_base, serving_root)  # refused before any work
    export_base = fileio.abspath(export_base)
    model_name = model_name or os.path.basename(export_base)
    version, path = version_folder(export_base, version, overwrite=overwrite)
    metadata = dict(metadata or {})
    method = str(metadata.get("method", ""))
    flags_json = json.dumps(metadata.get("config", {}), sort_keys=True, default=str)
    precision = str(metadata.get("precision", "float32"))
    module = DerainModule(model, method, flags_json, version, max_pixels=max_pixels, precision=precision)
    tmp = staging_folder(export_base, version)
    try:
        tf.saved_model.save(module, tmp, signatures={
            SERVING_DEFAULT: module.serve.get_concrete_function(),
            DERAIN_IMAGE: module.derain_image.get_concrete_function(),
            METADATA: module.metadata.get_concrete_function()})
        info = {"method": method, "config": metadata.get("config", {}), "version": version, "precision": precision,
                "pad_multiple": model.pad_multiple, "model_name": model_name, "max_pixels": module._max_pixels,
                "signatures": {k: {"inputs": list(i), "outputs": list(o)} for k, (i, o) in SIGNATURE_IO.items()}}
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, EXPORT_INFO), "w") as f:  # inside the hidden folder: atomic with it
            json.dump(info, f, indent=2, sort_keys=True, default=str)
        _move_into_place(tmp, path, overwrite, last=(SAVED_MODEL_FILE,))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if server_config:
        write_server_config(export_base, model_name, version, root=serving_root)
    return path


def staging_folder(export_base: str, version: int) -> str:
    """A new folder to write version ``version`` of ``export_base`` into before ``_move_into_place``:
    hidden inside a local ``export_base`` (a non-integer name, which TF Serving's version poller
    ignores; created with it), or a local temporary folder for a file-system URL (module docstring)."""
    if fileio.is_remote(export_base):
        return tempfile.mkdtemp(prefix=f"erl_derain_export_{version}_")
    os.makedirs(export_base, exist_ok=True)
    return os.path.join(export_base, f".tmp-{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _move_into_place(tmp: str, path: str, overwrite: bool, last=()) -> None:
    """Rename the finished export to its version folder (``os.rename`` refuses a non-empty target,
    so two concurrent exports of one version cannot both succeed). A version folder on a file-system
    URL is copied from the local ``tmp`` instead, the files ``last`` (relative to ``tmp``) after the
    others (module docstring)."""
    if fileio.is_remote(path):
        if fileio.exists(path):
            if not overwrite:
                raise FileExistsError(f"{path} appeared while exporting (another export?): not replaced")
            fileio.rmtree(path)
        fileio.upload_tree(tmp, path, last=last)
        return
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
