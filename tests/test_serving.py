"""SavedModel export for TF Serving (erl_derain.serving): signatures checked in a fresh process against
the Keras model, saved_model_cli, PredictRequest protos, inference-only variables, bad requests,
versioning, server config files, and the REST / gRPC clients against in-process emulations of TF
Serving's Predict (the JSON / b64 and proto formats end to end); the client and the package import
without TensorFlow (a fresh process de-rains photos through a NumPy fake server)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from erl_derain import serving
from erl_derain.inference import InferenceModel, apply_padded

from .conftest import TINY_FLAGS, make_folder_dataset

QUIET_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _cli(*args: str) -> None:
    from absl import flags

    from erl_derain import cli

    flags.FLAGS.unparse_flags()
    try:
        code = cli.main(flags.FLAGS(["erl-derain", *args]))
    finally:
        flags.FLAGS.unparse_flags()
    assert not code


def _keras(trainer):
    model = trainer.inference_model()
    return lambda x: apply_padded(lambda t: model(t, training=False), tf.convert_to_tensor(x), trainer.pad_multiple)


def _quantise(x) -> np.ndarray:
    return np.floor(np.asarray(x, np.float32) * np.float32(255) + np.float32(0.5)).astype(np.uint8)


def _png(image_uint8: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image_uint8, mode if image_uint8.ndim == 3 else "L").save(buf, "PNG")
    return buf.getvalue()


def _jpeg(image_uint8: np.ndarray, orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(image_uint8)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Tiny ERL-Net (MA_A: with the clean autoencoder) and MEMD, trained one step per stage with the
    CLI and exported with export_saved_model as `erl-derain export` does."""
    from erl_derain.training import load_trainer

    root = tmp_path_factory.mktemp("serving")
    data = make_folder_dataset(root / "data", n=2, size=(16, 16))
    out = {}
    for method, extra in (("erlnet", ["--erl_schedule=ma_a", "--stage_steps=1,1"]),
                          ("memd", ["--method=memd", "--stage_steps=1"]),
                          ("menet", ["--method=menet", "--menet_blocks=1", "--menet_tasks=p,e", "--stage_steps=1"]),
                          ("iadn", ["--method=iadn", "--iadn_width=4", "--iadn_blocks=1", "--iadn_php_groups=1",
                                    "--stage_steps=1"])):
        model_dir = root / f"run_{method}"
        _cli("train", f"--model_dir={model_dir}", f"--dataset=folder:{data}", "--crop_size=16", "--batch_size=2",
             "--jit_compile=false", "--noevaluate_after", *TINY_FLAGS, *extra)
        trainer, record = load_trainer(str(model_dir))
        base = root / "models" / method
        config = record.to_dict()
        path = serving.export_saved_model(trainer.inference_model(), str(base),
                                          metadata={"method": record.method, "config": config})
        out[method] = {"trainer": trainer, "config": config, "base": base, "path": Path(path)}
    return out


@pytest.fixture(scope="module")
def loaded(exports):
    return tf.saved_model.load(str(exports["erlnet"]["path"]))


# --------------------------------------------------------------------------------------------------
# The export itself
# --------------------------------------------------------------------------------------------------

FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
for job in json.loads(sys.argv[1]):
    assert "erl_derain" not in sys.modules
    model = tf.saved_model.load(job["export"])
    inp = np.load(job["inputs"])
    out = {"derained": model.signatures["serving_default"](images=tf.constant(inp["images"]))["derained"].numpy()}
    files = [inp[f"file{i}"].tobytes() for i in range(int(inp["n_files"]))]
    pngs = model.signatures["derain_image"](image_bytes=tf.constant(files))["derained_png_bytes"].numpy()
    for i, png in enumerate(pngs):
        out[f"png{i}"] = tf.io.decode_png(png).numpy()
    meta = {k: v.numpy().decode() for k, v in model.signatures["metadata"]().items()}
    out["metadata"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(job["outputs"], **out)
assert "erl_derain" not in sys.modules  # the SavedModel needs no Python code of this package
"""


def test_fresh_process_outputs_match_keras(exports, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((2, 37, 53, 3), dtype=np.float32)  # odd sizes: padded to the multiple, cropped back
    files = [_png(_quantise(images[0])), _jpeg(_quantise(rng.random((20, 30, 3)))),
             _png(_quantise(rng.random((13, 9)))),  # grey: decoded to RGB
             _png(np.concatenate([_quantise(images[1]), np.full((37, 53, 1), 128, np.uint8)], -1), "RGBA")]
    jobs, expected = [], {}
    for method, e in exports.items():
        run = _keras(e["trainer"])
        decoded = [tf.io.decode_image(f, channels=3, dtype=tf.float32, expand_animations=False) for f in files]
        expected[method] = {"derained": run(images).numpy(),
                            "pngs": [_quantise(run(d[None])[0]) for d in decoded]}
        np.savez(tmp_path / f"{method}_in.npz", images=images, n_files=len(files),
                 **{f"file{i}": np.frombuffer(f, np.uint8) for i, f in enumerate(files)})
        jobs.append({"export": str(e["path"]), "inputs": str(tmp_path / f"{method}_in.npz"),
                     "outputs": str(tmp_path / f"{method}_out.npz")})
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps(jobs)], capture_output=True, text=True,
                          env=QUIET_ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for method, e in exports.items():
        got = np.load(tmp_path / f"{method}_out.npz")
        assert got["derained"].shape == (2, 37, 53, 3)
        np.testing.assert_allclose(got["derained"], expected[method]["derained"], atol=1e-5, rtol=0)
        for i, want in enumerate(expected[method]["pngs"]):
            assert got[f"png{i}"].shape == want.shape and got[f"png{i}"].shape[-1] == 3
            np.testing.assert_array_equal(got[f"png{i}"], want)  # 8-bit PNG of the Keras output, exactly
        meta = json.loads(got["metadata"].tobytes())
        assert meta["method"] == method and meta["version"] == "1" and meta["precision"] == "float32"
        assert json.loads(meta["flags_json"]) == json.loads(json.dumps(e["config"]))


def test_saved_model_cli_lists_the_signatures(exports):
    cli = Path(sys.executable).with_name("saved_model_cli")
    proc = subprocess.run([str(cli), "show", "--dir", str(exports["memd"]["path"]), "--all"], capture_output=True,
                          text=True, env=QUIET_ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    for name, (inputs, outputs) in serving.SIGNATURE_IO.items():
        section, rest = text.split(f"signature_def['{name}']:")[1].split("Method name is: ", 1)
        assert rest.split()[0] == "tensorflow/serving/predict", name
        assert sorted(re.findall(r"inputs\['(\w+)'\]", section)) == sorted(inputs)
        assert sorted(re.findall(r"outputs\['(\w+)'\]", section)) == sorted(outputs)
    section = text.split("signature_def['derain_image']:")[1].split("Method name is")[0]
    assert section.count("DT_STRING") == 2
    section = text.split("signature_def['serving_default']:")[1].split("Method name is")[0]
    assert section.count("DT_FLOAT") == 2 and "(-1, -1, -1, 3)" in section


def test_export_holds_only_the_inference_variables(exports):
    e = exports["erlnet"]
    trainer, path = e["trainer"], e["path"]
    assert trainer.clean_ae is not None  # MA_A trains the clean autoencoder: it must stay out of the export
    model = trainer.inference_model()
    saved = [k for k, _ in tf.train.list_variables(str(path / "variables" / "variables"))
             if k.endswith("VARIABLE_VALUE")]
    assert not any("clean_ae" in k or "optimizer" in k for k in saved)
    everything = [w for net in trainer.networks().values() for w in net.weights]
    assert len(saved) == len(model.variables) < len(everything)
    reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))

    def fingerprint(values):
        return sorted((v.shape, v.tobytes()) for v in values)

    assert fingerprint(reader.get_tensor(k) for k in saved) == fingerprint(v.numpy() for v in model.variables)
    info = serving.read_export_info(str(path))
    assert info["method"] == "erlnet" and info["version"] == 1 and info["pad_multiple"] == trainer.pad_multiple
    assert info["config"]["method_config"]["schedule"] == "ma_a"


def test_bad_requests_give_named_errors(loaded):
    serve, derain = loaded.signatures["serving_default"], loaded.signatures["derain_image"]
    for channels in (4, 1):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"images: expected 3 channels \(RGB\)"):
            serve(images=tf.zeros((1, 8, 8, channels)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images: expected 3 channels.*got shape \[8 8 3\]"):
        serve(images=tf.zeros((8, 8, 3)))  # the batch dimension forgotten
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images: values must lie in \[0, 1\]"):
        serve(images=tf.fill((1, 8, 8, 3), 200.0))  # 8-bit pixel values sent as floats
    with pytest.raises(tf.errors.InvalidArgumentError, match="images: height and width must be positive"):
        serve(images=tf.zeros((1, 0, 8, 3)))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="float"):
        serve(images=tf.zeros((1, 8, 8, 3), tf.int32))  # the signature's TensorSpec refuses the dtype
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="string"):
        derain(image_bytes=tf.zeros((2,)))
    good = _png(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[1\]: not a JPEG, PNG, GIF, BMP or WebP"):
        derain(image_bytes=tf.constant([good, b"not an image"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="decode_image_bytes"):
        derain(image_bytes=tf.constant([good[:40]]))  # truncated: the decoder's error, from the named node
    for fmt in ("WEBP", "BMP", "GIF"):  # the other formats the header check lets through
        buf, options = io.BytesIO(), {"lossless": True} if fmt == "WEBP" else {}
        Image.fromarray(np.full((5, 6, 3), 90, np.uint8)).save(buf, fmt, **options)
        png = derain(image_bytes=tf.constant([buf.getvalue()]))["derained_png_bytes"].numpy()[0]
        assert serving.decode_png(png).shape == (5, 6, 3), fmt
    assert serve(images=tf.zeros((0, 8, 8, 3)))["derained"].shape == (0, 8, 8, 3)
    assert derain(image_bytes=tf.constant([], tf.string))["derained_png_bytes"].shape == (0,)


def _parse_config(text: str):
    """(name, base_path, platform, versions) of each config entry, with TF Serving's own proto when
    tensorflow-serving-api is installed."""
    try:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError:
        out = []
        for name, raw in serving.config_blocks(text):
            fields = dict(re.findall(r'(base_path|model_platform):\s*"([^"]*)"', raw))
            out.append((name, fields["base_path"], fields["model_platform"],
                        [int(v) for v in re.findall(r"\bversions:\s*(\d+)", raw)]))
        return out
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    return [(c.name, c.base_path, c.model_platform, list(c.model_version_policy.specific.versions))
            for c in parsed.model_config_list.config]


def test_versions_and_server_config(exports, tmp_path):
    import keras

    net = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(3, 1, name="mix")])
    model = InferenceModel(net, 4)
    root = tmp_path / "exports"
    base = root / "tiny"
    assert serving.next_version(str(base)) == 1
    assert serving.export_saved_model(model, str(base)) == str(base / "1")
    assert serving.export_saved_model(model, str(base), metadata={"method": "x"}) == str(base / "2")
    with pytest.raises(FileExistsError, match="2 exists"):
        serving.export_saved_model(model, str(base), version=2)
    (root / "batching_parameters.txt").write_text("# tuned by hand\nmax_batch_size { value: 1 }\n")
    # (the form before InferenceModel, network and multiple, is still accepted during the transition)
    assert serving.export_saved_model(net, 4, str(base), version=1, overwrite=True) == str(base / "1")
    assert serving.read_export_info(str(base / "1"))["version"] == 1
    assert serving.read_export_info(str(base / "1"))["pad_multiple"] == 4
    assert serving.export_saved_model(model, str(base), version=7) == str(base / "7")
    assert sorted(os.listdir(base)) == ["1", "2", "7"]  # no temporary folders left, nothing else for TF Serving
    assert serving.next_version(str(base)) == 8
    assert "tuned by hand" in (root / "batching_parameters.txt").read_text()  # never overwritten
    assert _parse_config((root / "models.config").read_text()) == [
        ("tiny", str(base.resolve()), "tensorflow", [7])]  # the version just exported
    assert _parse_config((root / "models.docker.config").read_text()) == [
        ("tiny", "/models/tiny", "tensorflow", [7])]

    # A second model in the same root gets its own block; a hand-edited block of another model stays.
    config = (root / "models.config").read_text().replace(
        "specific {\n        versions: 7\n      }", "latest { num_versions: 2 }  # hand-edited")
    (root / "models.config").write_text(config)
    serving.export_saved_model(model, str(root / "other"), model_name="other_model")
    text = (root / "models.config").read_text()
    assert "latest { num_versions: 2 }  # hand-edited" in text
    entries = _parse_config(text)
    assert ("other_model", str((root / "other").resolve()), "tensorflow", [1]) in entries
    assert [e[0] for e in entries] == ["other_model", "tiny"]
    assert _parse_config((root / "models.docker.config").read_text()) == [
        ("other_model", "/models/other", "tensorflow", [1]), ("tiny", "/models/tiny", "tensorflow", [7])]
    # The fixture's methods share one root, hence one config serving them all.
    models_root = exports["erlnet"]["base"].parent
    assert sorted(e[0] for e in _parse_config((models_root / "models.config").read_text())) == sorted(exports)

    batching = serving.batching_parameters_text()
    for field in ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches"):
        assert re.search(rf"^{field} {{ value: \d+ }}$", batching, re.M)
    lines = serving.server_command_lines(str(base))
    assert f"--model_config_file={root.resolve()}/models.config" in lines["tensorflow_model_server"]
    assert f"-v {root.resolve()}:/models " in lines["docker"] and "/models/models.docker.config" in lines["docker"]


# --------------------------------------------------------------------------------------------------
# In-process emulations of TF Serving's Predict (REST JSON and gRPC protos)
# --------------------------------------------------------------------------------------------------


def _unb64(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_unb64(v) for v in value]
    return value


def _rest_predict(models: dict, name: str, body: dict) -> tuple[int, dict]:
    """TF Serving's REST :predict, as documented: row ("instances") or columnar ("inputs") requests,
    {"b64": ...} for binary inputs, outputs named *_bytes returned as {"b64": ...}, single outputs
    unnamed, errors as {"error": ...}."""
    if name not in models:
        return 404, {"error": f"Servable not found for request: Latest({name})"}
    signature_name = body.get("signature_name", "serving_default")
    if signature_name not in models[name].signatures:
        return 400, {"error": f'Serving signature name: "{signature_name}" not found in signature def'}
    fn = models[name].signatures[signature_name]
    specs = fn.structured_input_signature[1]
    if not specs:  # json_tensor.cc FillPredictRequestFromJson
        return 400, {"error": f"Failed to get input map for signature: {signature_name}"}
    if "instances" in body:
        if not body["instances"]:
            return 400, {"error": "No values in 'instances' array"}
        columns = {k: [] for k in specs}
        for row in body["instances"]:
            if not (isinstance(row, dict) and set(row) <= set(specs) and set(row) != {"b64"}):
                (only,) = specs
                row = {only: row}
            for k, v in row.items():
                columns[k].append(_unb64(v))
    elif "inputs" in body:
        inputs = body["inputs"]
        if not (isinstance(inputs, dict) and set(inputs) <= set(specs) and set(inputs) != {"b64"}):
            (only,) = specs
            inputs = {only: inputs}
        columns = {k: _unb64(v) for k, v in inputs.items()}
    else:
        return 400, {"error": "Missing 'inputs' or 'instances' key"}
    try:
        tensors = {k: tf.constant(np.array(v, dtype=object if specs[k].dtype == tf.string
                                           else specs[k].dtype.as_numpy_dtype)) for k, v in columns.items()}
        result = fn(**tensors)
    except (tf.errors.OpError, TypeError, ValueError) as e:
        return 400, {"error": getattr(e, "message", str(e))}

    def jsonable(out_name, value):
        if value.dtype == object:
            if out_name.endswith("_bytes"):
                return [{"b64": base64.b64encode(v).decode()} for v in value] if value.ndim else \
                    {"b64": base64.b64encode(value.item()).decode()}
            return [v.decode() for v in value] if value.ndim else value.item().decode()
        return value.tolist()

    outputs = {k: jsonable(k, np.array(v.numpy(), dtype=object if v.dtype == tf.string else None))
               for k, v in result.items()}
    if "instances" in body:
        rows = [dict(zip(outputs, vals)) for vals in zip(*outputs.values())]
        return 200, {"predictions": [next(iter(r.values())) for r in rows] if len(outputs) == 1 else rows}
    return 200, {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}


@pytest.fixture(scope="module")
def rest_server(loaded):
    models, calls = {"erlnet": loaded}, []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            m = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict", self.path)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(body)
            status, answer = _rest_predict(models, m.group(1), body) if m else (404, {"error": "Not found"})
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}", calls
    httpd.shutdown()
    httpd.server_close()


def _serve_predict_request(models: dict, request):
    """TF Serving's gRPC Predict: inputs mapped by name (TensorProto -> ndarray), the signature run,
    outputs back as TensorProtos."""
    from tensorflow_serving.apis import predict_pb2

    fn = models[request.model_spec.name].signatures[request.model_spec.signature_name or "serving_default"]
    result = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for k, v in result.items():
        response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
    return response


def test_rest_client_against_emulated_server(exports, rest_server, loaded):
    server, calls = rest_server
    run = _keras(exports["erlnet"]["trainer"])
    rng = np.random.default_rng(1)
    images = rng.random((2, 21, 35, 3), dtype=np.float32)
    for use in ("instances", "inputs"):
        out = serving.predict_rest(server, "erlnet", images=images, use=use)
        np.testing.assert_allclose(out["derained"], run(images).numpy(), atol=1e-5)
        assert use in calls[-1] and calls[-1]["signature_name"] == "serving_default"

    files = [_png(_quantise(images[0])), _jpeg(_quantise(rng.random((19, 12, 3))))]
    out = serving.predict_rest(f"http://{server}", "erlnet", image_bytes=files)
    assert calls[-1]["instances"][1] == {"image_bytes": {"b64": base64.b64encode(files[1]).decode()}}
    pngs = out["derained_png_bytes"]
    assert [serving.decode_png(p).shape for p in pngs] == [(21, 35, 3), (19, 12, 3)]
    want = _quantise(run(tf.io.decode_image(files[0], channels=3, dtype=tf.float32)[None])[0])
    np.testing.assert_array_equal(serving.decode_png(pngs[0]), want)
    out = serving.predict_rest(server, "erlnet", image_bytes=files[1], use="inputs")
    assert serving.decode_png(out["derained_png_bytes"][0]).shape == (19, 12, 3)

    with pytest.raises(serving.ServingError, match="Failed to get input map for signature: metadata"):
        serving.predict_rest(server, "erlnet", signature="metadata", use="inputs")  # as TF Serving answers
    with pytest.raises(serving.ServingError, match="use protocol='grpc'"):
        serving.server_metadata(server, "erlnet", protocol="rest")

    with pytest.raises(serving.ServingError, match=r"(?s)HTTP 400.*images: expected 3 channels"):
        serving.predict_rest(server, "erlnet", images=np.zeros((1, 8, 8, 4), np.float32))
    with pytest.raises(serving.ServingError, match=r"(?s)HTTP 400.*image_bytes\[0\]: not a JPEG"):
        serving.predict_rest(server, "erlnet", image_bytes=[b"GIF7 nope"])
    with pytest.raises(serving.ServingError, match="HTTP 404.*Servable not found"):
        serving.predict_rest(server, "nope", image_bytes=files)


def test_derain_files_via_server(exports, rest_server, tmp_path):
    from erl_derain.data import image_io

    server, _ = rest_server
    run = _keras(exports["erlnet"]["trainer"])
    rng = np.random.default_rng(2)
    photos = tmp_path / "photos"
    photos.mkdir()
    rgb = _quantise(rng.random((22, 30, 3)))
    (photos / "a.png").write_bytes(_png(rgb))
    (photos / "b.jpg").write_bytes(_jpeg(_quantise(rng.random((20, 30, 3))), orientation=6))  # shown 20 wide
    (photos / "c.png").write_bytes(_png(_quantise(rng.random((17, 11)))))  # grey
    (photos / "d.png").write_bytes(_png(_quantise(rng.random((40, 24, 3)))))  # tiled with tile=32
    (photos / "e.png").write_bytes(b"\x89PNG broken")
    deep = (rng.random((9, 14, 3)) * 65535).astype(np.uint16)
    assert cv2.imwrite(str(photos / "f16.png"), deep[..., ::-1])  # 16 bits: sent as float32, written as 16 bits
    files = sorted(str(p) for p in photos.iterdir())
    out_dir = tmp_path / "out"
    written, skipped, failures = serving.derain_files_via_server(server, "erlnet", files, str(out_dir), tile=32,
                                                                 tile_overlap=8)
    assert (written, skipped) == (5, 0) and [os.path.basename(p) for p, _ in failures] == ["e.png"]
    assert "e.png" in failures[0][1]

    a = np.asarray(Image.open(out_dir / "a.png"))
    np.testing.assert_array_equal(a, _quantise(run(tf.io.decode_image(_png(rgb), dtype=tf.float32)[None])[0]))
    b = Image.open(out_dir / "b.png")
    assert b.size == (20, 30) and b.mode == "RGB"  # upright: the EXIF rotation applied before de-raining
    upright, _ = image_io.read_image(str(photos / "b.jpg"))
    assert np.abs(np.asarray(b) / 255.0 - run(upright[None])[0].numpy()).max() <= 0.5 / 255 + 1e-4
    c = Image.open(out_dir / "c.png")
    assert c.mode == "L" and c.size == (11, 17)  # grey back to grey
    d = np.asarray(Image.open(out_dir / "d.png")) / 255.0
    image, _ = image_io.read_image(str(photos / "d.png"))
    from erl_derain.inference import derain_image

    want = derain_image(InferenceModel(run, 1), image, tile=32, overlap=8)  # the same tiles, blended the same way
    assert d.shape == (40, 24, 3) and np.abs(d - want).max() <= 0.5 / 255 + 1e-4

    f16 = cv2.imread(str(out_dir / "f16.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert f16.dtype == np.uint16 and f16.shape == (9, 14, 3)
    np.testing.assert_allclose(f16 / 65535.0, run(deep[None] / np.float32(65535))[0].numpy(), atol=1e-4)

    written, skipped, failures = serving.derain_files_via_server(server, "erlnet", files[:2], str(out_dir))
    assert (written, skipped, failures) == (0, 2, [])


# --------------------------------------------------------------------------------------------------
# gRPC (tensorflow-serving-api)
# --------------------------------------------------------------------------------------------------


def test_predict_request_proto_roundtrip(exports, loaded):
    pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    from tensorflow_serving.apis import predict_pb2

    run = _keras(exports["erlnet"]["trainer"])
    images = np.random.default_rng(3).random((1, 37, 53, 3), dtype=np.float32)
    files = [_png(_quantise(images[0])), _png(_quantise(images[0, :20, :9]))]
    for signature, inputs in (("serving_default", {"images": images}), ("derain_image", {"image_bytes": files})):
        request = serving.make_predict_request("erlnet", inputs, signature, version=1)
        wire = predict_pb2.PredictRequest.FromString(request.SerializeToString())
        assert (wire.model_spec.name, wire.model_spec.signature_name, wire.model_spec.version.value) == (
            "erlnet", signature, 1)
        response = predict_pb2.PredictResponse.FromString(
            _serve_predict_request({"erlnet": loaded}, wire).SerializeToString())
        out = serving.parse_predict_response(response)
        if signature == "serving_default":
            np.testing.assert_allclose(out["derained"], run(images).numpy(), atol=1e-5)
        else:
            assert [serving.decode_png(p).shape for p in out["derained_png_bytes"]] == [(37, 53, 3), (20, 9, 3)]
            decoded = tf.io.decode_image(files[0], channels=3, dtype=tf.float32)
            np.testing.assert_array_equal(serving.decode_png(out["derained_png_bytes"][0]),
                                          _quantise(run(decoded[None])[0]))


def test_grpc_client_against_emulated_server(exports, loaded, tmp_path):
    pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    models = {"erlnet": loaded}

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802
            if request.model_spec.name not in models:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found: {request.model_spec.name}")
            try:
                return _serve_predict_request(models, request)
            except tf.errors.OpError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        host_port = f"127.0.0.1:{port}"
        run = _keras(exports["erlnet"]["trainer"])
        images = np.random.default_rng(4).random((2, 13, 21, 3), dtype=np.float32)
        out = serving.predict_grpc(host_port, "erlnet", images=images)
        np.testing.assert_allclose(out["derained"], run(images).numpy(), atol=1e-5)
        meta = serving.server_metadata(host_port, "erlnet")
        assert meta["method"] == "erlnet" and meta["version"] == "1"
        assert json.loads(meta["flags_json"])["method_config"]["widths"] == [8, 16]
        with pytest.raises(serving.ServingError, match="(?s)INVALID_ARGUMENT.*images: expected 3 channels"):
            serving.predict_grpc(host_port, "erlnet", images=np.zeros((1, 8, 8, 1), np.float32))
        (tmp_path / "p.jpg").write_bytes(_jpeg(_quantise(images[0])))
        written, skipped, failures = serving.derain_files_via_server(host_port, "erlnet", [str(tmp_path / "p.jpg")],
                                                                     str(tmp_path / "out"), protocol="grpc")
        assert (written, skipped, failures) == (1, 0, [])
        assert Image.open(tmp_path / "out" / "p.png").size == (21, 13)
    finally:
        server.stop(None)


def test_grpc_without_serving_api_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("tensorflow_serving"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'erl_derain\[serving\]'"):
        serving.predict_grpc("localhost:8500", "erlnet", images=np.zeros((1, 8, 8, 3), np.float32))


NO_TENSORFLOW_CLIENT = r"""
import base64, io, json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
from PIL import Image

import erl_derain
import erl_derain.serving
from erl_derain import fileio, photos, tiling
from erl_derain.data import image_io
from erl_derain.serving import client, layout, server_config

assert "tensorflow" not in sys.modules, "importing the client imported TensorFlow"
calls = []


def network(x):  # the fake server's network: pointwise, so tiles cannot change the result
    return np.sqrt(x)


class Handler(BaseHTTPRequestHandler):  # TF Serving's REST :predict, row format, in NumPy
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        calls.append(body["signature_name"])
        rows = body["instances"]
        if body["signature_name"] == "serving_default":
            out = [network(np.asarray(r["images"], np.float32)).tolist() for r in rows]
        else:
            out = []
            for r in rows:
                with Image.open(io.BytesIO(base64.b64decode(r["image_bytes"]["b64"]))) as im:
                    rgb = np.asarray(im.convert("RGB"), np.float32) / 255
                out.append({"b64": base64.b64encode(client.encode_png(network(rgb))).decode()})
        data = json.dumps({"predictions": out}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
folder = sys.argv[1]
rng = np.random.default_rng(0)
small, big = rng.random((20, 30, 3)), rng.random((50, 70, 3))
Image.fromarray(np.round(small * 255).astype(np.uint8)).save(os.path.join(folder, "small.png"))
Image.fromarray(np.round(big * 255).astype(np.uint8)).save(os.path.join(folder, "big.png"))
deep = (rng.random((9, 14, 3)) * 65535).astype(np.uint16)
cv2.imwrite(os.path.join(folder, "deep.png"), deep[..., ::-1])
files = [os.path.join(folder, n) for n in ("small.png", "big.png", "deep.png")]
out = os.path.join(folder, "out")
result = client.derain_files_via_server(f"127.0.0.1:{httpd.server_address[1]}", "fake", files, out, tile=32,
                                        tile_overlap=8)
httpd.shutdown()
assert result == (3, 0, []), result
for name, image in (("small", small), ("big", big)):
    got = np.asarray(Image.open(os.path.join(out, name + ".png")), np.float32)
    want = np.sqrt(np.round(image * 255) / 255) * 255
    assert np.abs(got - want).max() <= 0.5 + 1e-3, (name, np.abs(got - want).max())
got16 = cv2.imread(os.path.join(out, "deep.png"), cv2.IMREAD_UNCHANGED)[..., ::-1] / 65535.0
assert np.abs(got16 - np.sqrt(deep / 65535.0)).max() < 1e-4
assert "tensorflow" not in sys.modules, "de-raining through the client imported TensorFlow"
print(json.dumps({"calls": calls}))
"""


def test_client_and_package_need_no_tensorflow(tmp_path):
    """A fresh process imports the package, the client, image_io, tiling and photos, and de-rains a
    whole photo (derain_image), a tiled one (2 x 3 float tiles of serving_default, blended in NumPy)
    and a 16-bit one through a NumPy stand-in for TF Serving's REST API: TensorFlow is never imported."""
    proc = subprocess.run([sys.executable, "-c", NO_TENSORFLOW_CLIENT, str(tmp_path)], capture_output=True,
                          text=True, env=QUIET_ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert sorted(json.loads(lines[-1])["calls"]) == ["derain_image"] + ["serving_default"] * 7  # 6 tiles + 16 bit
    assert any(re.fullmatch(r"  \S*big\.png \(70x50, float tiles via rest\) -> \S*big\.png", ln) for ln in lines)
    assert any(re.fullmatch(r"  \S*small\.png \(30x20, original bytes via rest\) -> \S*small\.png", ln)
               for ln in lines)


def test_tensor_protos_convert_as_tensorflow_does():
    """The client's NumPy <-> TensorProto conversion (no TensorFlow) against tf.make_tensor_proto and
    tf.make_ndarray: tensor_content, the *_val fields, a broadcast single value, strings."""
    pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    from tensorflow_serving.apis import predict_pb2

    from erl_derain.serving import client

    rng = np.random.default_rng(6)
    values = [rng.random((2, 3, 4, 3), dtype=np.float32), np.arange(6, dtype=np.uint8).reshape(2, 3),
              np.array([1.5, -2.0], np.float16), np.array(7, np.int64), np.array([True, False]),
              np.array([b"ab", b"\x00c"], dtype=object), np.array(b"scalar", dtype=object), np.zeros((0, 3), np.float32)]
    for value in values:
        ours = predict_pb2.PredictRequest().inputs["x"]
        client._fill_tensor_proto(ours, value)
        theirs = tf.make_tensor_proto(value)
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(tf.make_ndarray(ours), tf.make_ndarray(theirs))
        got, want = client._tensor_proto_value(theirs), tf.make_ndarray(theirs)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    for proto in (tf.make_tensor_proto(0.5, shape=[2, 2]), tf.make_tensor_proto([1, 2, 3], dtype=tf.int32),
                  tf.make_tensor_proto(np.float16(1.5), shape=[3]), tf.make_tensor_proto([b"a"], shape=[2])):
        np.testing.assert_array_equal(client._tensor_proto_value(proto), tf.make_ndarray(proto))
    response = predict_pb2.PredictResponse()
    response.outputs["method"].CopyFrom(tf.make_tensor_proto("memd"))
    response.outputs["derained_png_bytes"].CopyFrom(tf.make_tensor_proto([b"p", b"q"]))
    assert serving.parse_predict_response(response) == {"method": "memd", "derained_png_bytes": [b"p", b"q"]}


def test_rest_json_format():
    body = serving.build_predict_json("derain_image", {"image_bytes": [b"\x00\x01", b"ab"]})
    assert body == {"signature_name": "derain_image",
                    "instances": [{"image_bytes": {"b64": "AAE="}}, {"image_bytes": {"b64": "YWI="}}]}
    body = serving.build_predict_json("derain_image", {"image_bytes": [b"ab"]}, use="inputs")
    assert body["inputs"] == {"image_bytes": [{"b64": "YWI="}]}
    assert serving.parse_predict_json({"predictions": [{"b64": "YWI="}]}, "derain_image") == {
        "derained_png_bytes": [b"ab"]}
    out = serving.parse_predict_json({"outputs": [[[[0.5, 0.25, 1.0]]]]}, "serving_default")
    assert out["derained"].dtype == np.float32 and out["derained"].shape == (1, 1, 1, 3)
    assert serving.parse_predict_json({"outputs": {"method": "memd", "version": "3", "flags_json": "{}"}},
                                      "metadata") == {"method": "memd", "version": "3", "flags_json": "{}"}
    with pytest.raises(serving.ServingError, match="boom"):
        serving.parse_predict_json({"error": "boom"}, "serving_default")
    with pytest.raises(ValueError, match="not both"):
        serving.predict_rest("localhost:1", "m", images=np.zeros((1, 8, 8, 3)), image_bytes=[b"x"])
    assert serving.predict_url("h:8501", "erlnet", 3) == "http://h:8501/v1/models/erlnet/versions/3:predict"


def test_no_server_is_one_clear_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    photo = tmp_path / "a.png"
    photo.write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(serving.ServerUnavailable, match=f"cannot reach TF Serving's REST API at .*:{port}"):
        serving.derain_files_via_server(f"127.0.0.1:{port}", "erlnet", [str(photo)] * 3, str(tmp_path / "out"))
    assert isinstance(serving.ServerUnavailable("x"), ConnectionError)


def test_export_runs_layers_in_inference_mode(tmp_path):
    """BatchNorm uses its moving statistics and Dropout is off in every signature (methods with
    such layers, e.g. the coming MENET / JRGR / IADN, export their test-time behaviour)."""
    import keras

    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(3, 3, padding="same"),
                              keras.layers.BatchNormalization(), keras.layers.Dropout(0.5),
                              keras.layers.Activation("sigmoid")])
    bn = model.layers[1]
    bn.moving_mean.assign([0.3, -0.2, 0.1])
    bn.moving_variance.assign([2.0, 0.5, 1.5])
    path = serving.export_saved_model(InferenceModel(model, 2), str(tmp_path / "bn"), server_config=False)
    assert not (tmp_path / "models.config").exists()
    loaded = tf.saved_model.load(path)
    x = np.random.default_rng(5).random((1, 7, 9, 3), dtype=np.float32)
    file = _png(_quantise(x[0]))
    want = apply_padded(lambda t: model(t, training=False), tf.constant(x), 2).numpy()
    want_png = _quantise(apply_padded(lambda t: model(t, training=False),
                                      tf.io.decode_image(file, dtype=tf.float32)[None], 2)[0])
    for _ in range(2):  # Dropout would make two calls differ; BatchNorm in training mode would use batch stats
        np.testing.assert_allclose(loaded.signatures["serving_default"](images=tf.constant(x))["derained"], want,
                                   atol=1e-5)
        png = loaded.signatures["derain_image"](image_bytes=tf.constant([file]))["derained_png_bytes"].numpy()[0]
        np.testing.assert_array_equal(serving.decode_png(png), want_png)
    # (last: a training-mode call updates the moving statistics of the Python model)
    assert not np.allclose(want, apply_padded(lambda t: model(t, training=True), tf.constant(x), 2).numpy(), atol=1e-3)
