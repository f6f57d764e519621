"""Export formats besides the TF Serving SavedModel: an ONNX file and a LiteRT (TFLite) file of an
``inference.InferenceModel``, for ``erl-derain export --format=onnx|litert`` (``saved_model``, the
default, is ``serving.export.export_saved_model`` unchanged).

The files are written by Keras 3's own exporters, ``model.export(path, format="onnx" | "litert")``,
which convert a ``tf.function`` of the model with the maintained converters (tf2onnx for ONNX,
TensorFlow's ``TFLiteConverter`` for LiteRT); nothing here walks a graph. The converted graph is the
whole ``InferenceModel``: padding to the network's multiple, the network (``training=False``),
cropping back and clipping, as the SavedModel's ``serving_default``.

Layout (the versions and ``--overwrite`` work as for the SavedModel; the folder is written under a
hidden name and renamed into place, or for a file-system URL ``export_base`` copied from a local
folder, the model file last: ``serving.export``)::

    <export_base>/<version>/model.onnx        (or model.tflite)
    <export_base>/<version>/erl_derain.json   format, method, training flags, version, input and
                                              output (names, shapes), pad multiple, converter
                                              versions, and the check below

Input ``images``: float32 [batch, height, width, 3], RGB in [0, 1] -> output ``derained``: float32,
the same shape, in [0, 1]. By default every dimension but the channels is dynamic (ONNX Runtime and
the LiteRT interpreter both take any batch, height and width: the graph pads and crops); with
``export_size=(h, w)`` the input is fixed to [1, h, w, 3] (runtimes and delegates that want static
shapes). Unlike ``serving_default`` the files do not check the value range of their input.

LiteRT files are limited to LiteRT's built-in operators (no TensorFlow "Flex" ops, which the plain
``ai_edge_litert`` interpreter cannot run): a network that needs others is refused with the
converter's list. After writing, the file is run once by its runtime (onnxruntime /
``ai_edge_litert``, when installed) on a small random batch and compared with the Keras model; the
largest difference is printed and stored in ``erl_derain.json`` (``check``).

Packages: ``pip install "erl_derain[export]"`` (tf2onnx and onnx to convert to ONNX; onnxruntime and
ai-edge-litert to run and check the files; the LiteRT converter is part of TensorFlow).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import warnings

from erl_derain.serving.layout import DERAINED, IMAGES, version_folder

FORMATS = ("saved_model", "onnx", "litert")
DEFAULT_FORMAT = "saved_model"
MODEL_FILES = {"onnx": "model.onnx", "litert": "model.tflite"}
FORMAT_INFO = "erl_derain.json"
# Modules each file format needs to be written, and to be run (the check, ``load_runner``).
CONVERTERS = {"onnx": ("tf2onnx", "onnx"), "litert": ()}
RUNTIMES = {"onnx": "onnxruntime", "litert": "ai_edge_litert"}
# Distributions whose versions are recorded in erl_derain.json.
_VERSIONS = {"onnx": ("tensorflow", "keras", "tf2onnx", "onnx"), "litert": ("tensorflow", "keras")}
INSTALL_HINT = 'pip install "erl_derain[export]"'
CHECK_SHAPE = (1, 37, 53, 3)  # odd sizes: the check also runs the padding and cropping


class ExportFormatError(ValueError):
    """A format, size or missing package that an export cannot take; the message names the flag."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportFormatError(f"--format={fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def parse_export_size(text, fmt: str = DEFAULT_FORMAT) -> tuple[int, int] | None:
    """``--export_size``: None / "" (dynamic), ``N`` (N x N) or ``HxW`` -> (height, width). Only the
    file formats take one: the SavedModel always takes any size."""
    check_format(fmt)
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (tuple, list)):
        parts = [str(v) for v in text]
    else:
        parts = re.split(r"[x,]", str(text).strip().lower())
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(re.fullmatch(r"\s*\d+\s*", p) for p in parts) or min(int(p) for p in parts) < 1:
        raise ExportFormatError(f"--export_size={text!r}: expected a positive integer N (N x N pixels) or HxW "
                                f"(e.g. 512 or 512x768)")
    if fmt == "saved_model":
        raise ExportFormatError(f"--export_size={text!r} fixes the input size of an ONNX or LiteRT file "
                                f"(--format=onnx|litert); the SavedModel takes any size: leave --export_size out")
    return int(parts[0]), int(parts[1])


def missing_packages(fmt: str, *, runtime: bool = False) -> list[str]:
    """The modules that ``fmt`` needs (to convert, and with ``runtime`` to run) and that are not installed."""
    check_format(fmt)
    names = list(CONVERTERS.get(fmt, ()))
    if runtime and fmt in RUNTIMES:
        names.append(RUNTIMES[fmt])
    return [n for n in names if importlib.util.find_spec(n) is None]


def require_packages(fmt: str) -> None:
    missing = missing_packages(fmt)
    if missing:
        raise ExportFormatError(f"--format={fmt} needs {' and '.join(missing)}, which are not installed: "
                                f"{INSTALL_HINT}")


def input_shape(size: tuple[int, int] | None) -> list:
    """The exported input's shape: [None, None, None, 3] (dynamic) or [1, h, w, 3]."""
    return [None, None, None, 3] if size is None else [1, int(size[0]), int(size[1]), 3]


def _named_output_model(model):
    """A Keras model returning ``{"derained": model(images)}``, so that both converters name the
    output as the SavedModel's ``serving_default`` does (a bare tensor would be ``Identity:0`` in
    ONNX and ``output_0`` in LiteRT)."""
    import keras

    class NamedOutput(keras.Model):
        def __init__(self, inner):
            super().__init__(name=f"{inner.name}_export", dtype="float32")
            self.inner = inner

        def build(self, input_shape=None):
            self.built = True

        def call(self, images, training=None):
            return {DERAINED: self.inner(images)}

    return NamedOutput(model)


def write_file(model, path: str, fmt: str, size: tuple[int, int] | None = None) -> None:
    """Convert ``model`` (an ``InferenceModel``) to ``path`` with Keras' exporter for ``fmt``."""
    import tensorflow as tf

    check_format(fmt)
    if fmt not in MODEL_FILES:
        raise ExportFormatError(f"--format={fmt} is not a single-file format (use serving.export_saved_model)")
    require_packages(fmt)
    spec = [tf.TensorSpec(input_shape(size), tf.float32, name=IMAGES)]
    wrapped = _named_output_model(model)
    wrapped(tf.zeros([1, 8, 8, 3]))  # built and called once, as Keras' exporters expect
    if fmt == "onnx":
        with warnings.catch_warnings():  # Keras' numpy-2 patch of tf2onnx sets np.object, with a FutureWarning
            warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)
            wrapped.export(path, format="onnx", input_signature=spec, verbose=False)
        return
    try:
        wrapped.export(path, format="litert", input_signature=spec, verbose=False,
                       target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    except Exception as e:  # the converter's ConverterError lists the ops it could not map
        if type(e).__name__ != "ConverterError":
            raise
        ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", str(e))))
        raise ExportFormatError(f"--format=litert: the network needs TensorFlow operations that LiteRT's built-in "
                                f"operators lack ({', '.join(ops) or 'see the converter message'}): "
                                f"{str(e).splitlines()[-1] if str(e) else type(e).__name__}") from e


def load_runner(path: str, *, threads: int | None = None):
    """A NumPy callable ``images -> derained`` running the exported file ``path`` (``.onnx`` with
    onnxruntime on the CPU, ``.tflite`` with the ``ai_edge_litert`` interpreter); ``threads``: the
    runtime's thread count (None: its default). ``ImportError`` naming the extra when the runtime is
    missing."""
    import numpy as np

    path = os.fspath(path)
    fmt = "onnx" if path.endswith(".onnx") else "litert" if path.endswith(".tflite") else None
    if fmt is None:
        raise ExportFormatError(f"{path}: not an .onnx or .tflite file")
    if importlib.util.find_spec(RUNTIMES[fmt]) is None:
        raise ImportError(f"running {path} needs {RUNTIMES[fmt]}: {INSTALL_HINT}")
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda images: session.run([DERAINED], {IMAGES: np.asarray(images, np.float32)})[0]
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner()
    return lambda images: runner(**{IMAGES: np.asarray(images, np.float32)})[DERAINED]


def _check(model, path: str, fmt: str, size) -> dict:
    """Run the written file on a random batch and compare with the Keras model."""
    import numpy as np

    if importlib.util.find_spec(RUNTIMES[fmt]) is None:
        return {"checked": False, "reason": f"{RUNTIMES[fmt]} is not installed ({INSTALL_HINT})"}
    shape = CHECK_SHAPE if size is None else tuple(input_shape(size))
    images = np.random.default_rng(0).random(shape, dtype=np.float32)
    got = load_runner(path)(images)
    want = np.asarray(model(images))
    if got.shape != want.shape:
        raise ExportFormatError(f"{path}: {RUNTIMES[fmt]} returned shape {got.shape} for {shape}, "
                                f"the Keras model {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    if not np.isfinite(diff):
        raise ExportFormatError(f"{path}: {RUNTIMES[fmt]} returned non-finite values where the Keras model does not")
    return {"checked": True, "runtime": RUNTIMES[fmt], "runtime_version": _version(RUNTIMES[fmt]),
            "input_shape": list(shape), "max_abs_difference": diff}


def _version(module: str) -> str | None:
    names = {"ai_edge_litert": "ai-edge-litert"}
    try:
        return importlib.metadata.version(names.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return None


def export_file(model, export_base: str, fmt: str, *, size: tuple[int, int] | None = None,
                version: int | None = None, metadata: dict | None = None, overwrite: bool = False,
                check: bool = True) -> dict:
    """Write ``<export_base>/<version>/model.onnx`` (``fmt="onnx"``) or ``model.tflite``
    (``"litert"``) with ``erl_derain.json`` beside it, and return that JSON's content (plus
    ``path``, the model file). ``model``: an ``InferenceModel`` (or a network with a
    ``pad_multiple`` attribute); ``size``: (height, width) to fix the input to, None for dynamic;
    ``version``: default the next integer, an existing one raises ``FileExistsError`` unless
    ``overwrite``; ``metadata``: ``{"method": ..., "config": {flags}, "precision": ...}``; ``check``: run the file
    once with its runtime when it is installed (module docstring)."""
    from erl_derain import fileio
    from erl_derain.inference import as_inference_model
    from erl_derain.serving.export import _move_into_place, staging_folder

    check_format(fmt)
    if fmt not in MODEL_FILES:
        raise ExportFormatError(f"--format={fmt}: export_file writes {', '.join(MODEL_FILES)}; the SavedModel is "
                                f"serving.export_saved_model")
    if size is not None:
        size = parse_export_size(tuple(size), fmt)
    require_packages(fmt)
    model = as_inference_model(model)
    export_base = fileio.abspath(export_base)
    version, folder = version_folder(export_base, version, overwrite=overwrite)
    metadata = dict(metadata or {})
    tmp = staging_folder(export_base, version)
    try:
        os.makedirs(tmp, exist_ok=True)
        file_path = os.path.join(tmp, MODEL_FILES[fmt])
        write_file(model, file_path, fmt, size)
        info = {"format": fmt, "file": MODEL_FILES[fmt], "method": str(metadata.get("method", "")),
                "config": metadata.get("config", {}), "version": version, "pad_multiple": model.pad_multiple,
                "precision": str(metadata.get("precision", "float32")), "dynamic_size": size is None, "export_size": None if size is None else list(size),
                "inputs": {IMAGES: {"dtype": "float32", "shape": input_shape(size), "range": [0.0, 1.0]}},
                "outputs": {DERAINED: {"dtype": "float32", "shape": input_shape(size), "range": [0.0, 1.0]}},
                "versions": {name: _version(name) for name in _VERSIONS[fmt]},
                "bytes": os.path.getsize(file_path)}
        if fmt == "onnx":
            import onnx

            info["opset"] = max(o.version for o in onnx.load(file_path, load_external_data=False).opset_import
                                if o.domain in ("", "ai.onnx"))
        info["check"] = _check(model, file_path, fmt, size) if check else {"checked": False, "reason": "check=False"}
        with open(os.path.join(tmp, FORMAT_INFO), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, sort_keys=True, default=str)
        _move_into_place(tmp, folder, overwrite, last=(MODEL_FILES[fmt],))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**info, "path": os.path.join(folder, MODEL_FILES[fmt])}


def describe(info: dict) -> str:
    """What ``erl-derain export --format=onnx|litert`` prints about an ``export_file`` result."""
    shape = "x".join("?" if d is None else str(d) for d in info["inputs"][IMAGES]["shape"])
    size = ("dynamic: any batch, height and width (the graph pads to the multiple of "
            f"{info['pad_multiple']} and crops back)" if info["dynamic_size"] else
            f"fixed at --export_size={info['export_size'][0]}x{info['export_size'][1]}: the file takes only "
            f"that size (batch 1)")
    lines = [f"Exported {info['format']} file {info['path']} ({info['bytes'] / 2**20:.1f} MiB): input {IMAGES} "
             f"float32 [{shape}] in [0, 1] -> {DERAINED}; size {size}."]
    check = info.get("check", {})
    if check.get("checked"):
        lines.append(f"Checked with {check['runtime']} {check['runtime_version']}: largest difference from the Keras "
                     f"model on a random {'x'.join(map(str, check['input_shape']))} batch "
                     f"{check['max_abs_difference']:.1e}.")
    else:
        lines.append(f"Not run after export: {check.get('reason', 'no check')}.")
    lines.append(f"Details in {os.path.join(os.path.dirname(info['path']), FORMAT_INFO)}.")
    return "\n".join(lines)
