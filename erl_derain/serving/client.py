"""REST and gRPC clients of a TF Serving server running an ``erl_derain`` export, and
``derain_files_via_server`` (``erl-derain derain --server=host:port --model_name=...``).

No TensorFlow here: REST needs the standard library, NumPy, and Pillow / OpenCV for the images
(``erl_derain.data.image_io``); tiles are cut and blended in NumPy (``erl_derain.tiling``, as the
local path does). gRPC needs ``tensorflow-serving-api`` (``pip install 'erl_derain[serving]'``);
requests and answers are converted between NumPy and ``TensorProto`` here, but note that the
generated protos of that package import the ``tensorflow`` package themselves.
"""

from __future__ import annotations

import base64
import io
import json
import re
import urllib.error
import urllib.request

import numpy as np

from erl_derain import photos
from erl_derain.serving.layout import (DERAIN_IMAGE, DERAINED, DERAINED_PNG_BYTES, IMAGE_BYTES, IMAGES, METADATA,
                                       SERVING_DEFAULT, SIGNATURE_IO)
from erl_derain.tiling import blend_tiles


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


# --------------------------------------------------------------------------------------------------
# REST (JSON)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# gRPC (tensorflow-serving-api)
# --------------------------------------------------------------------------------------------------


def _serving_api():
    try:
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError as e:
        raise ImportError(f"gRPC needs tensorflow-serving-api ({e}): pip install 'erl_derain[serving]' "
                          "(or use the REST API: protocol='rest', port 8501)") from e
    return grpc, predict_pb2, prediction_service_pb2_grpc


# TensorProto dtypes (tensorflow/core/framework/types.proto): NumPy dtype, and the repeated field
# holding the values when tensor_content is empty.
_DT_STRING = 7
_DTYPES = {1: (np.float32, "float_val"), 2: (np.float64, "double_val"), 3: (np.int32, "int_val"),
           4: (np.uint8, "int_val"), 5: (np.int16, "int_val"), 6: (np.int8, "int_val"),
           9: (np.int64, "int64_val"), 10: (np.bool_, "bool_val"), 17: (np.uint16, "int_val"),
           19: (np.float16, "half_val")}
_DT_OF = {np.dtype(t): code for code, (t, _) in _DTYPES.items()}


def _fill_tensor_proto(proto, value) -> None:
    """``value`` (a NumPy array, or a sequence of bytes / str for a string tensor) into ``proto``
    (a ``TensorProto``), as ``tf.make_tensor_proto`` writes it."""
    if isinstance(value, (bytes, bytearray, str)) or (
            not isinstance(value, np.ndarray) and len(value) and isinstance(value[0], (bytes, bytearray, str))):
        array = np.array(value, dtype=object)
    else:
        array = np.asarray(value)
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = _DT_STRING
        proto.string_val.extend(v.encode() if isinstance(v, str) else bytes(v) for v in array.reshape(-1).tolist())
    else:
        code = _DT_OF.get(array.dtype)
        if code is None:
            raise TypeError(f"cannot send a {array.dtype} tensor (float32 images or encoded bytes expected)")
        proto.dtype = code
        proto.tensor_content = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    for size in array.shape:
        proto.tensor_shape.dim.add(size=int(size))


def _tensor_proto_value(proto):
    """A ``TensorProto`` -> NumPy array (as ``tf.make_ndarray``); string tensors -> object array."""
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    size = int(np.prod(shape, dtype=np.int64))
    if proto.dtype == _DT_STRING:
        values = list(proto.string_val)
        return np.array(values + [values[-1]] * (size - len(values)) if values else [b""] * size,
                        dtype=object).reshape(shape)
    if proto.dtype not in _DTYPES:
        raise ServingError(f"the server answered a tensor of unsupported dtype {proto.dtype}")
    dtype, field = _DTYPES[proto.dtype]
    dtype = np.dtype(dtype)
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    values = np.array(getattr(proto, field), np.uint16 if field == "half_val" else dtype)
    if field == "half_val":
        values = values.view(np.float16)
    if values.size == size:
        return values.reshape(shape)
    if values.size == 0:
        return np.zeros(shape, dtype)
    return np.concatenate([values, np.full(size - values.size, values[-1], dtype)]).reshape(shape)


def make_predict_request(model_name: str, inputs: dict, signature: str, version: int | None = None):
    """A ``tensorflow.serving.PredictRequest`` with each input as a TensorProto."""
    _, predict_pb2, _ = _serving_api()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        if name == IMAGE_BYTES:
            value = np.array([bytes(v) for v in value], dtype=object)
        _fill_tensor_proto(request.inputs[name], value)
    return request


def parse_predict_response(response) -> dict:
    """``PredictResponse`` -> ``{output name: numpy array | list of bytes | str}``."""
    out = {}
    for name, proto in response.outputs.items():
        value = _tensor_proto_value(proto)
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
    """The ``metadata`` signature of a served model: ``{"method", "flags_json", "version", "precision"}`` strings
    (exports older than ``precision`` lack it).
    gRPC only: TF Serving's REST API cannot call a signature without inputs (and neither protocol
    can under ``--enable_batching``; see the ``erl_derain.serving`` docstring)."""
    if protocol == "rest":
        raise ServingError("TF Serving's REST API cannot call the input-less 'metadata' signature (\"Failed to get "
                           "input map for signature\"): use protocol='grpc' (port 8500), or read "
                           "assets.extra/erl_derain.json in the export (read_export_info)")
    out = _predict(protocol)(server, model_name, signature=METADATA, version=version, timeout=timeout)
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------------
# Photo files through the server
# --------------------------------------------------------------------------------------------------

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


def derain_tiled(predict, server: str, model_name: str, image: np.ndarray, tile: int, overlap: int,
                 version: int | None = None, timeout: float = 600.0) -> np.ndarray:
    """``image`` (float32 HxWx3) de-rained as overlapping float tiles sent to ``serving_default``
    and blended here (``tiling.blend_tiles``, the local path's grid and weights; multiple 1: the
    server pads each tile to its network's multiple itself)."""

    def run(tile_image: np.ndarray) -> np.ndarray:
        out = predict(server, model_name, images=tile_image[None], version=version, timeout=timeout)[DERAINED]
        return np.clip(np.asarray(out, np.float32)[0], 0.0, 1.0)

    return blend_tiles(run, image, tile, overlap, 1)


def server_runner(server: str, model_name: str, *, protocol: str = "rest", version: int | None = None,
                  tile: int = 0, tile_overlap: int = 32, quality: int = 95,
                  timeout: float = 600.0) -> photos.RunPhoto:
    """``run_photo`` (``photos.derain_photos``) de-raining one file on the server
    (``derain_files_via_server``)."""
    from erl_derain.data import image_io

    predict = _predict(protocol)

    def run(path: str, out_path: str) -> str:
        with open(path, "rb") as f:
            data = f.read()
        image, meta = image_io.read_image(path)
        image_io.check_writable(out_path, meta)
        h, w = image.shape[:2]
        if tile > 0 and max(h, w) > tile:
            result = derain_tiled(predict, server, model_name, image, tile, tile_overlap, version, timeout)
            route = "float tiles"
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
        return f"{w}x{h}, {route} via {protocol}"

    return run


def derain_files_via_server(server: str, model_name: str, files, output_dir: str, *, protocol: str = "rest",
                            overwrite: bool = False, output_format: str = "png", version: int | None = None,
                            tile: int = 0, tile_overlap: int = 32, quality: int = 95,
                            timeout: float = 600.0, jobs=None) -> tuple[int, int, list[tuple[str, str]]]:
    """De-rain photo files on a TF Serving server; returns ``(written, skipped, failures)`` with
    ``failures`` a list of ``(path, message)`` (one bad file does not stop the others).

    Each photo is read locally (``image_io.read_image``: validates it and records grey / alpha /
    16 bits / orientation) and sent to ``derain_image`` as its original bytes (or as a lossless PNG
    of the upright pixels when the server would decode them differently: EXIF-rotated photos,
    CMYK JPEGs, TIFFs); the PNG that comes back is written like ``erl-derain derain`` writes
    (``image_io.write_image``: grey back to grey, alpha kept, the output format from
    ``output_format``: an extension or ``"same"``). 16-bit photos go through ``serving_default``
    (float32, no 8-bit step). With ``tile > 0``, photos larger than ``tile`` on a side are sent as
    overlapping float tiles to ``serving_default`` and blended here (``derain_tiled``), which
    bounds the server's memory. ``server``: ``host:port`` (REST 8501 or gRPC 8500). The loop, the
    output names, skipping and the per-file lines are ``photos.derain_photos``'s, as for local
    de-raining (``jobs``: a plan already made and checked, ``photos.plan`` / ``check_plan``). Raises
    ``ServerUnavailable`` (a ``ConnectionError``) at once when no server answers, and ``ImportError``
    for gRPC without tensorflow-serving-api."""
    run = server_runner(server, model_name, protocol=protocol, version=version, tile=tile,
                        tile_overlap=tile_overlap, quality=quality, timeout=timeout)
    if protocol == "grpc":
        _serving_api()  # a missing package is one clear error, not one failure per file
    return photos.derain_photos(files, output_dir, run, output_format=output_format, overwrite=overwrite,
                                fatal=(ServerUnavailable,), jobs=jobs)
