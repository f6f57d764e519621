"""The benchmark suite (issue 9): training speed, inference latency, peak memory and input-pipeline
throughput of every method, as markdown tables and JSON.

    python benchmarks/suite.py [--methods=erlnet,memd,menet,iadn,jrgr] [--steps=5 --warmup=1]
        [--precisions=float32,mixed] [--xla=false,true] [--variants_for=METHODS]
        [--crop_sizes=256,320,512] [--inference_sizes=256,512,1024] [--kinds=train,inference,data,scaling,peak]
        [--skip=scaling:jrgr:512] [--batches=jrgr:1] [--note=TEXT] [--json=PATH] [--markdown=PATH]
        [--timeout=900] [--smoke]
    python benchmarks/suite.py --render=results.json [--markdown=PATH]   # the page of an earlier run

Measurements (``kind`` in the JSON), each in a fresh subprocess (the suite re-invokes itself with
``--one=<json specs>`` and reads one JSON line per measurement from the child's stdout), so that the
peak resident memory (``ru_maxrss``, process-wide and monotone) is that measurement's own and the
mixed-precision global policy and XLA state of one row cannot leak into the next:

* ``train``: training steps/s and images/s of the last (joint) stage at the paper's crop and batch
  (ERL-Net MA_D and MEMD 320x320 batch 1; MENET 224x224 batch 20; the intensity-aware network 256x256
  batch 1; JRGR 256x256 batch 16, joint stage with a ``real`` batch too), for every ``--precisions``
  x ``--xla`` combination (``jit_compile`` of ``tf.function(trainer.train_step)``; ``mixed`` =
  ``erl_derain.distribute.set_precision(True)``: mixed_bfloat16 on CPU, mixed_float16 on GPU), with
  the peak RSS (and the device's peak on GPU: ``tf.config.experimental.get_memory_info``).
* ``inference``: seconds per image through the exported SavedModel (``erl_derain.serving.
  export_saved_model`` into a temporary folder, one ``export`` row per method; the child then only
  loads it with ``tf.saved_model.load`` and calls ``serving_default``) at each ``--inference_sizes``.
* ``data``: examples/s of ``erl_derain.data.pipelines.paired_dataset`` (the ``synthetic_rain``
  training stream, no model) at the method's crop and batch, against its training images/s.
* ``scaling``: training step time and peak RSS at each ``--crop_sizes`` (batch 1, float32, no XLA).
* ``peak``: this machine's rate on a large 3x3 convolution at the method's typical width, float32
  and bfloat16 (``conv_peak``), the reference of the *% of peak* columns. The ``train`` rows also
  count their step's multiply-adds and the ``export`` rows the inference network's per megapixel
  (``erl_derain.flops``), giving achieved GFLOP/s.

A measurement that fails (an op XLA cannot compile, a method that is not mixed-precision safe, a
child killed for memory) or exceeds ``--timeout`` becomes a row with its error, and the suite goes
on. ``--smoke`` runs tiny networks at 32/64 pixels, one step each, every measurement of a method in
one process (``--noisolate``), two at a time: a check that every path works, not a measurement.
Progress goes to stderr, the tables to stdout (and ``--markdown``), the rows to ``--json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import peak_rss_mib, time_calls, write_page  # noqa: E402

KINDS = ("train", "inference", "data", "scaling", "peak")
MARKER = "BENCH_RESULT "


def _registry():
    from erl_derain.methods import discover

    return discover()


METHODS = tuple(_registry())  # every registered method (erl_derain.methods), in registration order
# (crop, batch, where the figures come from): each method's MethodSpec.paper_batch
PAPER = {m: spec.paper_batch or (256, 1, "the paper gives no training crop/batch: 256, 1") for m, spec in
         _registry().items()}
SMOKE_PAPER = {m: (max(2 * spec.tiny_crop, 32), 2 if spec.tiny_crop >= 32 else 1) for m, spec in _registry().items()}
NAMES = {m: spec.display_name or m for m, spec in _registry().items()}
HEAVY_SKIPS = ",".join(f"scaling:{m}:512" for m, spec in _registry().items() if spec.heavy)

MACS_SIDE = 512  # multiply-adds per megapixel are counted on the inference network at 512x512
PEAK = dict(side=256, chain=4, calls=5)  # the peak convolution: 1 x side x side x C, `chain` in a row per call
SMOKE_PEAK = dict(side=32, chain=2, calls=1)
PEAK_DTYPES = ("float32", "bfloat16")

FULL_DEFAULTS = dict(steps=5, warmup=1, crop_sizes="256,320,512", inference_sizes="256,512,1024", timeout=900.0,
                     jobs=1, isolate=True, data_seconds=5.0, skip=HEAVY_SKIPS)
SMOKE_DEFAULTS = dict(steps=1, warmup=1, crop_sizes="32,64", inference_sizes="32,64", timeout=120.0,
                      jobs=2, isolate=False, data_seconds=0.3, skip="", variants_for=METHODS[0])
SKIP_REASON = {f"scaling:{m}:512": f"{NAMES[m]} at 512x512 takes too long on a CPU (its MethodSpec says heavy); "
               "--skip= runs it" for m, spec in _registry().items() if spec.heavy}


# ------------------------------------------------------------------------------------------------
# Method configurations
# ------------------------------------------------------------------------------------------------

def method_config(method: str, smoke: bool, crop: int):
    """The run record a measurement builds its trainer from: the method's default (paper) widths, or
    its tiny configuration (MethodSpec.tiny) for --smoke."""
    from erl_derain.run_config import RunConfig, make_record

    if method not in _registry():
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    spec = _registry()[method]
    return make_record(method, RunConfig(crop_size=int(crop)), **(dict(spec.tiny) if smoke else {}))


# ------------------------------------------------------------------------------------------------
# The child: one or more measurements in this process
# ------------------------------------------------------------------------------------------------

def _gpu_reset(tf) -> bool:
    if not tf.config.list_physical_devices("GPU"):
        return False
    try:
        tf.config.experimental.reset_memory_stats("GPU:0")
    except Exception:  # noqa: BLE001 (old drivers / TF builds)
        pass
    return True


def _gpu_peak_mib(tf) -> float | None:
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def _environment(tf) -> dict:
    import keras

    return {"tf_version": tf.__version__, "keras_version": keras.__version__,
            "devices": [f"{d.device_type}:{d.name.split(':')[-1]}" for d in tf.config.list_physical_devices()]}


def _build_side(multiple: int, at_least: int = 64) -> int:
    return multiple * max(1, math.ceil(at_least / multiple))


def task_train(spec: dict) -> dict:
    import numpy as np
    import tensorflow as tf

    from erl_derain import distribute
    from erl_derain.methods import make_trainer

    method, crop, batch = spec["method"], int(spec["crop"]), int(spec["batch"])
    policy = distribute.set_precision(spec["precision"] == "mixed")
    out = {"policy": policy}
    t0 = time.perf_counter()
    trainer = make_trainer(method_config(method, spec["smoke"], crop))
    multiple = int(trainer.pad_multiple)
    if crop % multiple:
        return {**out, "status": "skipped",
                "reason": f"{crop}x{crop} is not a multiple of the network's size multiple {multiple}"}
    trainer.build_networks((1, crop, crop, 3))
    trainer.set_stage(len(trainer.stages) - 1)
    out["stage"] = trainer.stages[-1].name
    out["build_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    rainy = rng.random((batch, crop, crop, 3), dtype=np.float32)
    data = {"rainy": tf.constant(rainy), "clean": tf.constant(np.clip(rainy * 0.9, 0, 1))}
    for stream in _registry()[method].streams:  # the method's own inputs (e.g. unpaired real rain)
        data[stream.key] = tf.constant(rng.random((batch, crop, crop, 3), dtype=np.float32))
    step = tf.function(trainer.train_step, jit_compile=bool(spec["xla"]))
    out["rss_before_step_mib"] = peak_rss_mib()
    _gpu_reset(tf)
    losses = []

    def call():
        losses.append(float(tf.cast(step(data)["loss"], tf.float32)))

    t = time_calls(call, int(spec["steps"]), int(spec["warmup"]))
    out.update(status="ok", first_step_s=t["first_s"], step_s=t["mean_s"], median_step_s=t["median_s"],
               min_step_s=t["min_s"], steps_per_s=1.0 / t["mean_s"], images_per_s=batch / t["mean_s"],
               peak_rss_mib=peak_rss_mib(), loss=losses[-1], loss_finite=all(math.isfinite(v) for v in losses))
    try:  # the step's multiply-adds (forward, gradients, every network it updates), from its traced graph
        from erl_derain import flops

        out["macs_per_step"] = flops.graph_macs(step.get_concrete_function(data).graph)
        out["gflops"] = 2 * out["macs_per_step"] / t["mean_s"] / 1e9
    except (ValueError, NotImplementedError) as err:
        out["macs_error"] = str(err)[:300]
    gpu = _gpu_peak_mib(tf)
    if gpu is not None:
        out["gpu_peak_mib"] = gpu
    return out


def _inference_model(spec: dict):
    """(run record, trainer, built float32 inference model) of ``spec``'s method."""
    import tensorflow as tf

    from erl_derain import distribute
    from erl_derain.methods import make_trainer

    distribute.set_precision(False)
    config = method_config(spec["method"], spec["smoke"], 256)
    trainer = make_trainer(config)
    side = _build_side(int(trainer.pad_multiple))
    trainer.build_networks((1, side, side, 3))
    model = trainer.inference_model()
    model(tf.zeros((1, side, side, 3)))
    return config, trainer, model


def _work(model) -> dict:
    """The inference network's multiply-adds per megapixel (at MACS_SIDE) and its typical conv width."""
    from collections import Counter

    from erl_derain import flops

    widths = Counter()
    macs = flops.count_macs(model, (MACS_SIDE, MACS_SIDE), by_width=widths)
    return {"macs_per_mp": macs / (MACS_SIDE * MACS_SIDE / 1e6), "conv_width": flops.typical_width(widths)}


def task_export(spec: dict) -> dict:
    from erl_derain import serving

    config, trainer, model = _inference_model(spec)
    work = _work(model)
    t0 = time.perf_counter()
    path = serving.export_saved_model(model, spec["export_base"], version=1,
                                      metadata={"method": spec["method"], "config": config.to_dict()},
                                      server_config=False)
    seconds = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return {"status": "ok", "export_path": path, "export_s": seconds, "export_mib": size / 2**20,
            "params": int(model.count_params()), "pad_multiple": int(trainer.pad_multiple),
            "peak_rss_mib": peak_rss_mib(), **work}


def conv_peak(width: int, side: int, dtype: str, chain: int, calls: int) -> dict:
    """This machine's rate on the work the networks do: ``chain`` 3x3 'same' convolutions
    ``width`` -> ``width`` in a row on a 1 x ``side`` x ``side`` x ``width`` batch, in ``dtype``, in
    one ``tf.function`` call; the best (shortest) of ``calls`` timed calls after one untimed."""
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(0)
    x = tf.cast(rng.uniform((1, side, side, width)), dtype)
    kernel = tf.cast(rng.uniform((3, 3, width, width), -1.0, 1.0) / (3.0 * width ** 0.5), dtype)

    @tf.function
    def run(x):
        for _ in range(chain):
            x = tf.nn.conv2d(x, kernel, 1, "SAME")
        return x[0, 0, 0, 0]

    t = time_calls(lambda: run(x).numpy(), calls, 1)
    macs = chain * side * side * 9 * width * width
    return {"macs": macs, "best_s": t["min_s"], "gflops": 2 * macs / t["min_s"] / 1e9}


def task_peak(spec: dict) -> dict:
    _, _, model = _inference_model(spec)
    width = _work(model)["conv_width"]
    del model
    out = {"status": "ok", "conv_width": width, "peak_side": int(spec["side"]), "peak_chain": int(spec["chain"])}
    for dtype in PEAK_DTYPES:
        try:
            got = conv_peak(width, int(spec["side"]), dtype, int(spec["chain"]), int(spec["calls"]))
            out[f"peak_gflops_{dtype}"] = got["gflops"]
        except Exception as err:  # noqa: BLE001 (a dtype this machine cannot run is a note, not a failed row)
            out[f"peak_error_{dtype}"] = f"{type(err).__name__}: {err}"[:300]
    if not any(f"peak_gflops_{d}" in out for d in PEAK_DTYPES):
        return {"status": "error", "error": out.get("peak_error_float32", "no dtype ran")}
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def test_image(size: int):
    """A smooth photo-like image (as serving_latency.py)."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * xx + 2 * yy), 0.5 + 0.3 * np.cos(5 * yy), 0.4 + 0.3 * xx * yy], -1)
    return np.clip(rgb + 0.03 * np.random.default_rng(0).random((size, size, 3)), 0, 1).astype(np.float32)


def task_inference(spec: dict) -> dict:
    import tensorflow as tf

    size = int(spec["size"])
    path = spec["export_path"]
    if not os.path.isdir(path):
        return {"status": "error", "error": f"no export at {path} (the export row failed)"}
    t0 = time.perf_counter()
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    load_s = time.perf_counter() - t0
    x = tf.constant(test_image(size)[None])
    rss_loaded = peak_rss_mib()
    _gpu_reset(tf)
    shapes = []

    def call():
        shapes.append(tuple(serve(images=x)["derained"].numpy().shape))

    t = time_calls(call, int(spec["steps"]), int(spec["warmup"]))
    if shapes[-1] != (1, size, size, 3):
        return {"status": "error", "error": f"serving_default returned shape {shapes[-1]} for a {size}x{size} image"}
    out = {"status": "ok", "load_s": load_s, "first_call_s": t["first_s"], "latency_s": t["median_s"],
           "mean_latency_s": t["mean_s"], "min_latency_s": t["min_s"],
           "megapixels_per_s": size * size / 1e6 / t["median_s"],
           "rss_after_load_mib": rss_loaded, "peak_rss_mib": peak_rss_mib()}
    gpu = _gpu_peak_mib(tf)
    if gpu is not None:
        out["gpu_peak_mib"] = gpu
    return out


def task_data(spec: dict) -> dict:
    import tensorflow as tf

    from erl_derain import datasets  # noqa: F401  (registers the TFDS builders)
    from erl_derain.data.pipelines import paired_dataset

    batch = int(spec["batch"])

    def measure(crop: int) -> dict:
        ds = paired_dataset("synthetic_rain", "train", batch_size=batch, crop_size=crop, training=True, seed=0,
                            data_dir=spec.get("data_dir"), extra_features=())
        it = iter(ds)
        t0 = time.perf_counter()
        next(it)
        first = time.perf_counter() - t0
        for _ in range(3):  # past the split's caching and the autotuner's first guesses
            next(it)
        n, t0 = 0, time.perf_counter()
        while True:
            got = next(it)
            n += 1
            dt = time.perf_counter() - t0
            if dt >= float(spec["seconds"]) and n >= 3:
                break
        assert tuple(got["rainy"].shape) == (batch, crop, crop, 3), got["rainy"].shape
        return {"first_batch_s": first, "batches": n, "seconds": dt, "examples_per_s": n * batch / dt}

    crop = int(spec["crop"])
    try:
        return {"status": "ok", "data_crop": crop, **measure(crop)}
    except tf.errors.InvalidArgumentError as err:
        found = re.search(r"\[height\] \[(\d+)\] \[width\] \[(\d+)\]", str(err))
        if "smaller than" not in str(err) or not found:
            raise
        side = min(int(found.group(1)), int(found.group(2)))
        note = f"synthetic_rain's tiles are {side}x{side}"
        return {"status": "ok", "data_crop": side, "note": note, **measure(side)}


TASKS = {"train": task_train, "scaling": task_train, "export": task_export, "inference": task_inference,
         "data": task_data, "peak": task_peak}


def child_main(specs_json: str) -> int:
    specs = json.loads(specs_json)
    env = None
    for spec in specs:
        t0 = time.perf_counter()
        try:
            import tensorflow as tf

            if env is None:
                env = _environment(tf)
            result = TASKS[spec["kind"]](spec)
        except Exception as err:  # noqa: BLE001 -- every failure becomes a row
            message = f"{type(err).__name__}: {err}".strip()
            result = {"status": "error", "error": message[:2000]}
        finally:
            if len(specs) > 1:  # several measurements share this process: reset what one could leak
                try:
                    import keras

                    keras.mixed_precision.set_global_policy("float32")
                    keras.backend.clear_session()
                except Exception:  # noqa: BLE001
                    pass
        result.update(id=spec["id"], wall_s=time.perf_counter() - t0, isolated=len(specs) == 1, **(env or {}))
        print(MARKER + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------
# The parent: plan, run the children, report
# ------------------------------------------------------------------------------------------------

def _bool_list(text: str) -> list[bool]:
    values = []
    for v in text.split(","):
        v = v.strip().lower()
        if v in ("true", "1", "yes", "on"):
            values.append(True)
        elif v in ("false", "0", "no", "off"):
            values.append(False)
        elif v:
            raise ValueError(f"--xla takes true/false values, got {v!r}")
    return values


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise ValueError(f"{flag} takes positive integers, got {text!r}")
    return values


def _names(text: str, allowed, flag: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{flag}: unknown {', '.join(bad)}; available: {', '.join(allowed)}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--kinds", default=",".join(KINDS), help="measurements: train, inference, data, scaling, peak")
    p.add_argument("--steps", type=int, default=None, help="timed calls per measurement (5; smoke 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (1); the first is reported apart")
    p.add_argument("--precisions", default="float32,mixed")
    p.add_argument("--xla", default="false,true", help="jit_compile values of the training step")
    p.add_argument("--variants_for", default=None,
                   help="methods measured at every --precisions x --xla (default: all; smoke: erlnet); the "
                        "others at the first precision and first --xla value only")
    p.add_argument("--crop_sizes", default=None, help="scaling sweep (256,320,512; smoke 32,64)")
    p.add_argument("--inference_sizes", default=None, help="(256,512,1024; smoke 32,64)")
    p.add_argument("--skip", default=None,
                   help="rows not to run, as kind:method[:size] (default scaling:jrgr:512; smoke none)")
    p.add_argument("--batches", default="", help="training batch instead of the paper's, as method:batch,... "
                                                     "(e.g. jrgr:1 where the paper's batch does not fit)")
    p.add_argument("--note", action="append", default=[], help="a line for the page's 'This run' section")
    p.add_argument("--data_seconds", type=float, default=None, help="seconds of tf.data per data row (5; smoke 0.3)")
    p.add_argument("--data_dir", default=None, help="TFDS data directory for synthetic_rain (TFDS default)")
    p.add_argument("--json", default=None, help="write the rows here (default: no JSON file)")
    p.add_argument("--markdown", default=None, help="write the page (machine, tables, failures) here")
    p.add_argument("--timeout", type=float, default=None, help="seconds per measurement (900; smoke 120)")
    p.add_argument("--jobs", type=int, default=None, help="children at a time (1; smoke 2); only with --noisolate")
    p.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                   help="one process per measurement (default; smoke: one per method)")
    p.add_argument("--noisolate", dest="isolate", action="store_false")
    p.add_argument("--smoke", action="store_true", help="tiny networks and sizes, one step: checks every path")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="measure nothing: print (and --markdown) the page of an earlier run's --json file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None or args.render is not None:
        return args
    for key, value in (SMOKE_DEFAULTS if args.smoke else FULL_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.method_list = _names(args.methods, METHODS, "--methods")
        args.kind_list = _names(args.kinds, KINDS, "--kinds")
        args.precision_list = _names(args.precisions, ("float32", "mixed"), "--precisions")
        args.xla_list = _bool_list(args.xla)
        args.variant_methods = (args.method_list if args.variants_for is None
                                else _names(args.variants_for, METHODS, "--variants_for"))
        args.crop_list = _int_list(args.crop_sizes, "--crop_sizes")
        args.size_list = _int_list(args.inference_sizes, "--inference_sizes")
        args.skip_list = [s.strip() for s in args.skip.split(",") if s.strip()]
        args.batch_map = _batches(args.batches)
        if not args.method_list or not args.precision_list or not args.xla_list:
            raise ValueError("--methods, --precisions and --xla need at least one value each")
        if args.steps < 1 or args.warmup < 0 or args.jobs < 1:
            raise ValueError("--steps must be >= 1, --warmup >= 0, --jobs >= 1")
    except ValueError as err:
        p.error(str(err))
    if args.isolate and args.jobs > 1:
        print("note: --jobs > 1 needs --noisolate (one process per method); running one at a time", file=sys.stderr)
        args.jobs = 1
    return args


def _skip_reason(args, kind: str, method: str, size: int | None) -> str | None:
    for entry in args.skip_list:
        parts = entry.split(":")
        if len(parts) >= 2 and parts[0] in (kind, "*") and parts[1] in (method, "*") and (
                len(parts) < 3 or (size is not None and parts[2] == str(size))):
            return SKIP_REASON.get(entry, f"--skip={entry}")
    return None


def paper_setting(method: str, smoke: bool, batches: dict | None = None) -> tuple[int, int]:
    crop, batch = SMOKE_PAPER[method] if smoke else PAPER[method][:2]
    return crop, (batches or {}).get(method, batch)


def _batches(text: str) -> dict[str, int]:
    out = {}
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        method, _, value = entry.partition(":")
        if method not in METHODS or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--batches takes method:batch entries (e.g. jrgr:1), got {entry!r}")
        out[method] = int(value)
    return out


def build_plan(args, export_root: str) -> list[dict]:
    """Every row, in run order. Rows with ``same_as`` copy another row's measurement; rows with a
    ``status`` (skipped) are not run."""
    rows = []
    train_keys = {}
    base = {"steps": args.steps, "warmup": args.warmup, "smoke": args.smoke}
    for method in args.method_list:
        crop, batch = paper_setting(method, args.smoke, args.batch_map)
        if "train" in args.kind_list:
            variants = ([(p, x) for p in args.precision_list for x in args.xla_list]
                        if method in args.variant_methods else [(args.precision_list[0], args.xla_list[0])])
            for precision, xla in variants:
                row = {"kind": "train", "method": method, "crop": crop, "batch": batch, "precision": precision,
                       "xla": xla, **base}
                reason = _skip_reason(args, "train", method, crop)
                if reason:
                    row.update(status="skipped", reason=reason)
                else:
                    train_keys[(method, crop, batch, precision, xla)] = row
                rows.append(row)
        if "scaling" in args.kind_list:
            for c in args.crop_list:
                row = {"kind": "scaling", "method": method, "crop": c, "batch": 1, "precision": "float32",
                       "xla": False, **base}
                reason = _skip_reason(args, "scaling", method, c)
                same = train_keys.get((method, c, 1, "float32", False))
                if reason:
                    row.update(status="skipped", reason=reason)
                elif same is not None:
                    row["same_as"] = same
                rows.append(row)
        if "inference" in args.kind_list:
            export_base = os.path.join(export_root, method)
            export = {"kind": "export", "method": method, "smoke": args.smoke, "export_base": export_base}
            sizes = [s for s in args.size_list if not _skip_reason(args, "inference", method, s)]
            if sizes:
                rows.append(export)
            for s in args.size_list:
                row = {"kind": "inference", "method": method, "size": s, "steps": args.steps,
                       "warmup": args.warmup, "export_path": os.path.join(export_base, "1")}
                reason = _skip_reason(args, "inference", method, s)
                if reason:
                    row.update(status="skipped", reason=reason)
                rows.append(row)
        if "peak" in args.kind_list:
            row = {"kind": "peak", "method": method, "smoke": args.smoke, **(SMOKE_PEAK if args.smoke else PEAK)}
            reason = _skip_reason(args, "peak", method, None)
            if reason:
                row.update(status="skipped", reason=reason)
            rows.append(row)
    if "data" in args.kind_list:
        shared = {}
        for method in args.method_list:
            crop, batch = paper_setting(method, args.smoke, args.batch_map)
            row = {"kind": "data", "method": method, "crop": crop, "batch": batch, "seconds": args.data_seconds,
                   "data_dir": args.data_dir, "smoke": args.smoke}
            reason = _skip_reason(args, "data", method, crop)
            if reason:
                row.update(status="skipped", reason=reason)
            elif (crop, batch) in shared:
                row["same_as"] = shared[crop, batch]
            else:
                shared[crop, batch] = row
            rows.append(row)
    for i, row in enumerate(rows):
        row["id"] = i
    return rows


def describe(row: dict) -> str:
    kind, method = row["kind"], row["method"]
    if kind in ("train", "scaling"):
        return (f"{method} {kind} {row['crop']}x{row['crop']} batch {row['batch']} {row['precision']}"
                f"{' XLA' if row['xla'] else ''}")
    if kind == "inference":
        return f"{method} inference {row['size']}x{row['size']}"
    if kind == "data":
        return f"{method} tf.data {row['crop']}x{row['crop']} batch {row['batch']}"
    if kind == "peak":
        return f"{method} peak 3x3 convolution {row['side']}x{row['side']}"
    return f"{method} {kind}"


def summary(result: dict) -> str:
    status = result.get("status")
    if status != "ok":
        return status_text(result)
    for key, unit in (("step_s", "s/step"), ("latency_s", "s/image"), ("examples_per_s", "examples/s"),
                      ("export_mib", "MiB"), ("peak_gflops_float32", "GFLOP/s float32")):
        if key in result:
            rss = f", peak RSS {fmt(result['peak_rss_mib'], 4)} MiB" if "peak_rss_mib" in result else ""
            return f"ok: {fmt(result[key])} {unit}{rss}"
    return "ok"


def _units(args, to_run: list[dict]) -> list[list[dict]]:
    if args.isolate:
        return [[row] for row in to_run]
    by_method = {}
    for row in to_run:
        by_method.setdefault(row["method"], []).append(row)
    return list(by_method.values())


def _child_spec(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("same_as",)}


def run_units(args, units: list[list[dict]]) -> dict[int, dict]:
    """Run each unit (a list of rows) in its own child process, ``args.jobs`` at a time; returns the
    results by row id."""
    results = {}
    pending = list(units)
    running = []  # (proc, unit, out_file, err_file, started, deadline)
    total = sum(len(u) for u in units)
    done = 0
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    while pending or running:
        while pending and len(running) < args.jobs:
            unit = pending.pop(0)
            for row in unit:
                print(f"[suite] start {describe(row)}", file=sys.stderr, flush=True)
            out_f, err_f = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            cmd = [sys.executable, os.path.abspath(__file__), "--one=" + json.dumps([_child_spec(r) for r in unit])]
            proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=env, start_new_session=True)
            started = time.monotonic()
            running.append((proc, unit, out_f, err_f, started, started + args.timeout * len(unit)))
        time.sleep(0.1)
        for item in list(running):
            proc, unit, out_f, err_f, started, deadline = item
            timed_out = False
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                if time.monotonic() < deadline:
                    continue
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: only what it started
                pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, with its own rusage
            child_peak_mib = usage.ru_maxrss / 1024.0
            running.remove(item)
            out_f.seek(0)
            err_f.seek(0)
            got = {}
            for line in out_f.read().splitlines():
                if line.startswith(MARKER):
                    result = json.loads(line[len(MARKER):])
                    got[result["id"]] = result
            err_lines = [ln for ln in err_f.read().splitlines() if ln.strip()]
            out_f.close()
            err_f.close()
            for row in unit:
                if row["id"] in got:
                    continue
                if timed_out:
                    got[row["id"]] = {"status": "timeout",
                                      "error": f"timeout: no result within {args.timeout:.0f} s (child killed)"}
                else:
                    if proc.returncode == -signal.SIGKILL:
                        got[row["id"]] = {"status": "error", "peak_rss_at_death_mib": child_peak_mib,
                                          "error": f"killed by SIGKILL at {fmt(child_peak_mib / 1024)} GiB resident "
                                                   f"(the kernel's out-of-memory killer, most likely)"}
                    else:
                        last = err_lines[-1] if err_lines else ""
                        got[row["id"]] = {"status": "error", "error": f"child exited with code {proc.returncode}"
                                                                     f"{': ' + last if last else ''}"}
            for row in unit:
                done += 1
                print(f"[suite] {done}/{total} {describe(row)}: {summary(got[row['id']])}", file=sys.stderr, flush=True)
            results.update(got)
    return results


def merge_results(plan: list[dict], results: dict[int, dict]) -> list[dict]:
    rows = []
    by_id = {}
    for row in plan:
        out = {k: v for k, v in row.items() if k not in ("same_as", "export_base", "data_dir", "seconds")}
        if "same_as" in row:
            src = row["same_as"]["id"]
            measured = {k: v for k, v in results.get(src, {}).items() if k != "id"}
            out.update(measured, same_measurement_as=src)
        elif "status" not in row:
            out.update({k: v for k, v in results.get(row["id"], {"status": "error", "error": "not run"}).items()
                        if k != "id"})
        by_id[row["id"]] = out
        rows.append(out)
    # the inference rows carry their method's export figures
    exports = {r["method"]: r for r in rows if r["kind"] == "export"}
    for r in rows:
        if r["kind"] == "inference" and r["method"] in exports:
            e = exports[r["method"]]
            r["params"], r["export_mib"] = e.get("params"), e.get("export_mib")
            if e.get("status") != "ok" and r.get("status") == "error":
                r["error"] = f"export failed: {e.get('error', e.get('status'))}"
        r.pop("export_path", None)
    add_rates(rows)
    return rows


def _peak_dtype(row: dict) -> str:
    """The peak a row is compared with: float32, or bfloat16 for mixed-precision training (on a GPU,
    mixed precision is float16: the bfloat16 peak is then only an approximation of its peak)."""
    return "bfloat16" if row.get("precision") == "mixed" else "float32"


def add_rates(rows: list[dict]) -> None:
    """Achieved GFLOP/s (2 x multiply-adds / seconds) of the inference rows (the export row's
    multiply-adds per megapixel x the image's megapixels, over the median s/image) and the percentage
    of the method's measured peak of the train and inference rows (pure; in place)."""
    peaks = {r["method"]: r for r in rows if r["kind"] == "peak" and _ok(r)}
    exports = {r["method"]: r for r in rows if r["kind"] == "export" and _ok(r)}
    for r in rows:
        if r["kind"] == "inference" and r["method"] in exports and "macs_per_mp" in exports[r["method"]]:
            r["macs_per_mp"] = exports[r["method"]]["macs_per_mp"]
            if _ok(r) and r.get("latency_s"):
                r["gflops"] = 2 * r["macs_per_mp"] * r["size"] ** 2 / 1e6 / r["latency_s"] / 1e9
        peak = peaks.get(r["method"], {}).get(f"peak_gflops_{_peak_dtype(r)}")
        if r["kind"] in ("train", "inference") and _ok(r) and r.get("gflops") and peak:
            r["peak_gflops"] = peak
            r["pct_of_peak"] = 100.0 * r["gflops"] / peak


# ------------------------------------------------------------------------------------------------
# Formatting (pure)
# ------------------------------------------------------------------------------------------------

def fmt(value, digits: int = 3) -> str:
    """``digits`` significant digits without exponent (integers keep all theirs); None/NaN -> '—'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    value = float(value)
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _cell(value) -> str:
    return str(value).replace("\n", " ").replace("|", "\\|")


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; cells are str()-ed, '|' escaped, newlines flattened."""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def error_line(message: str) -> str:
    """The informative first line of an error: ANSI codes, Keras' "Exception encountered when calling
    X.call()." wrapper line and TensorFlow's ``{{function_node ...}}`` prefix removed; the exception's
    type name kept."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", message)
    kind, _, rest = message.partition(": ") if re.match(r"^[A-Za-z_][\w.]*: ", message) else ("", "", message)
    for line in rest.splitlines():
        line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line).strip()
        if line and not line.startswith("Exception encountered when calling"):
            return f"{kind}: {line}" if kind else line
    return kind or message.strip()


def status_text(row: dict, width: int = 110) -> str:
    status = row.get("status", "error")
    if status == "ok":
        notes = [row["note"]] if row.get("note") else []
        if row.get("loss_finite") is False:
            notes.append("loss not finite")
        if row.get("isolated") is False and "peak_rss_mib" in row:
            notes.append("shared process")
        return "ok" + (f" ({'; '.join(notes)})" if notes else "")
    if status == "skipped":
        return f"skipped ({row.get('reason', '')})"
    first = error_line(row.get("error") or "") or status
    if status == "error" and not first.startswith("error"):
        first = "error: " + first
    return first if len(first) <= width else first[:width - 1] + "…"


def relative(values: list) -> list:
    """Each value divided by the first finite positive one (None where missing)."""
    ref = next((v for v in values if v is not None and math.isfinite(v) and v > 0), None)
    return [None if (v is None or ref is None) else v / ref for v in values]


def bottleneck(data_per_s, train_per_s) -> str:
    """Whether the input pipeline (alone, ``data_per_s`` examples/s) would hold the model back
    (``train_per_s`` images/s)."""
    if data_per_s is None or train_per_s is None or not data_per_s > 0 or not train_per_s > 0:
        return "—"
    ratio = data_per_s / train_per_s
    if ratio >= 1:
        return f"no: the pipeline alone is {fmt(ratio, 2)}x faster"
    return f"yes: the pipeline alone is {fmt(1 / ratio, 2)}x slower"


def _ok(row) -> bool:
    return row.get("status") == "ok"


def _num(row, key):
    return row.get(key) if _ok(row) else None


def _batch_label(row: dict) -> str:
    paper = PAPER[row["method"]][1]
    return str(row["batch"]) if row.get("smoke") or row["batch"] == paper else f"{row['batch']} (paper: {paper})"


def tables(rows: list[dict], gpu: bool) -> dict[str, str]:
    out = {}
    train = [r for r in rows if r["kind"] == "train"]
    if train:
        headers = ["method", "crop", "batch", "precision", "XLA", "s/step", "steps/s", "images/s",
                   "first step s", "peak RSS MiB"] + (["GPU peak MiB"] if gpu else []) + [
                   "GMAC/step", "GFLOP/s", "% of peak", "status"]
        body = [[NAMES[r["method"]], r["crop"], _batch_label(r), r["precision"], "on" if r["xla"] else "off",
                 fmt(_num(r, "step_s")), fmt(_num(r, "steps_per_s")), fmt(_num(r, "images_per_s")),
                 fmt(_num(r, "first_step_s")), fmt(_num(r, "peak_rss_mib"), 4)]
                + ([fmt(_num(r, "gpu_peak_mib"), 4)] if gpu else [])
                + [fmt(_giga(_num(r, "macs_per_step"))), fmt(_num(r, "gflops")), fmt(_num(r, "pct_of_peak"), 2),
                   status_text(r)] for r in train]
        out["train"] = markdown_table(headers, body)
    inference = [r for r in rows if r["kind"] == "inference"]
    if inference:
        headers = ["method", "parameters", "export MiB", "size", "s/image (median)", "min s", "MP/s",
                   "first call s", "peak RSS MiB"] + (["GPU peak MiB"] if gpu else []) + [
                   "GMAC/MP", "GFLOP/s", "% of peak", "status"]
        body = [[NAMES[r["method"]], f"{r['params']:,}" if r.get("params") else "—", fmt(r.get("export_mib")),
                 f"{r['size']}x{r['size']}", fmt(_num(r, "latency_s")), fmt(_num(r, "min_latency_s")),
                 fmt(_num(r, "megapixels_per_s")), fmt(_num(r, "first_call_s")), fmt(_num(r, "peak_rss_mib"), 4)]
                + ([fmt(_num(r, "gpu_peak_mib"), 4)] if gpu else [])
                + [fmt(_giga(r.get("macs_per_mp"))), fmt(_num(r, "gflops")), fmt(_num(r, "pct_of_peak"), 2),
                   status_text(r)] for r in inference]
        out["inference"] = markdown_table(headers, body)
    data = [r for r in rows if r["kind"] == "data"]
    if data:
        body = []
        for r in data:
            ref = next((t for t in train if t["method"] == r["method"] and t["precision"] == "float32"
                        and not t["xla"] and _ok(t)), None)
            if ref is None:
                ref = next((t for t in train if t["method"] == r["method"] and _ok(t)), None)
            train_rate = ref.get("images_per_s") if ref else None
            data_rate = _num(r, "examples_per_s")
            ref_label = (f"{fmt(train_rate)} ({ref['precision']}, XLA {'on' if ref['xla'] else 'off'})"
                         if ref else "—")
            body.append([NAMES[r["method"]], f"{r['crop']}x{r['crop']}", _batch_label(r),
                         f"{r['data_crop']}x{r['data_crop']}" if r.get("data_crop") else "—", fmt(data_rate),
                         ref_label, fmt(data_rate / train_rate if data_rate and train_rate else None),
                         bottleneck(data_rate, train_rate), status_text(r)])
        out["data"] = markdown_table(["method", "crop", "batch", "tf.data crop", "tf.data examples/s",
                                      "training images/s", "ratio", "input-bound?", "status"], body)
    scaling = [r for r in rows if r["kind"] == "scaling"]
    if scaling:
        body = []
        for method in dict.fromkeys(r["method"] for r in scaling):
            mine = [r for r in scaling if r["method"] == method]
            ok = [r for r in mine if _ok(r)]
            pixel_ref = ok[0]["crop"] ** 2 if ok else None
            t_rel = dict(zip((id(r) for r in ok), relative([r["step_s"] for r in ok])))
            m_rel = dict(zip((id(r) for r in ok), relative([r["peak_rss_mib"] for r in ok])))
            for r in mine:
                body.append([NAMES[method], f"{r['crop']}x{r['crop']}",
                             fmt(r["crop"] ** 2 / pixel_ref) if (pixel_ref and _ok(r)) else "—",
                             fmt(_num(r, "step_s")), fmt(t_rel.get(id(r))), fmt(_num(r, "peak_rss_mib"), 4),
                             fmt(m_rel.get(id(r))), status_text(r)])
        out["scaling"] = markdown_table(["method", "crop", "x pixels", "s/step", "x time", "peak RSS MiB",
                                         "x RSS", "status"], body)
    peak = [r for r in rows if r["kind"] == "peak"]
    if peak:
        body = [[NAMES[r["method"]], r.get("conv_width") or "—",
                 f"{r['chain']} x 3x3, 1x{r['side']}x{r['side']}x{r.get('conv_width', 'C')}"]
                + [fmt(_num(r, f"peak_gflops_{d}")) if _num(r, f"peak_gflops_{d}") else
                   (f"error: {error_line(r[f'peak_error_{d}'])[:80]}" if r.get(f"peak_error_{d}") else "—")
                   for d in PEAK_DTYPES] + [status_text(r)] for r in peak]
        out["peak"] = markdown_table(["method", "conv width", "convolutions per call"]
                                     + [f"{d} GFLOP/s" for d in PEAK_DTYPES] + ["status"], body)
    return out


def _giga(value):
    return None if value is None else value / 1e9


# ------------------------------------------------------------------------------------------------
# Machine and page
# ------------------------------------------------------------------------------------------------

def _dist_version(*names) -> str | None:
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram = int(line.split()[1]) / 2**20  # KiB -> GiB
    except OSError:
        pass
    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            gpus = [ln.strip() for ln in subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                                        timeout=20).stdout.splitlines() if ln.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load = os.getloadavg()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "ram_gib": ram, "gpus": gpus,
            "python": platform.python_version(), "tf_version": _dist_version("tensorflow", "tensorflow-cpu"),
            "keras_version": _dist_version("keras"), "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_average_start": list(load), "shared": load[0] > 1.0}


def machine_lines(machine: dict) -> list[str]:
    ram = f"{machine['ram_gib']:.1f} GiB RAM" if machine.get("ram_gib") else "RAM unknown"
    gpu = "; ".join(machine["gpus"]) if machine["gpus"] else "no GPU"
    la = machine["load_average_start"]
    end = machine.get("load_average_end")
    lines = [f"* Machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), {ram}, {gpu}",
             f"* Software: TensorFlow {machine.get('tf_version')}, Keras {machine.get('keras_version')}, "
             f"Python {machine['python']}, {machine['platform']}",
             f"* Date: {machine['date']}; run took {fmt(machine.get('duration_s', 0) / 60, 2)} min",
             f"* Load average at start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"
             + (f"; at end: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}" if end else "")]
    if machine["shared"]:
        lines.append("* **The machine was shared** (load average above 1 at the start): other processes ran "
                     "on the same cores, so the timings are slower and noisier than on an idle machine.")
    if machine.get("devices"):
        lines.append(f"* TensorFlow devices: {', '.join(machine['devices'])}")
    return lines


INTRO = """\
# Benchmarks

Training speed, inference latency, peak memory and input-pipeline throughput of the five methods,
measured by `benchmarks/suite.py` (issue 9). Every figure on this page comes from the run described
under "This run"; re-running the command there regenerates the page.

## How to run

    python benchmarks/suite.py --markdown=docs/benchmarks.md [--json=results.json]   # everything (long on a CPU)
    python benchmarks/suite.py --methods=erlnet,menet --kinds=train,inference --steps=3
    python benchmarks/suite.py --smoke          # every path at tiny sizes: 2-3 min on 2 shared CPU cores

`--methods` (erlnet, memd, menet, iadn, jrgr), `--kinds` (train, inference, data, scaling, peak),
`--precisions` (float32, mixed), `--xla` (false, true), `--variants_for` (the methods measured at every
precision x XLA combination; the others at float32 without XLA), `--crop_sizes`, `--inference_sizes`,
`--steps` / `--warmup` (timed / untimed calls), `--skip=kind:method[:size]`, `--timeout` (seconds per
measurement), `--json`, `--markdown`; `--render=results.json --markdown=...` rewrites the page from an
earlier run's JSON without measuring. Progress goes to stderr. Each measurement runs in a fresh
subprocess, so its peak memory is its own and the mixed-precision policy and XLA state of one row do
not leak into the next. A measurement that fails or times out is a row with its error; the suite goes on.

## What is measured

* **Methods**: ERL-Net with the MA_D strategy (MLGD) in its last stage (III: the residual encoder
  and the decoder trained with L_pre, the forward pass going through the main encoder, the residual
  encoder and the decoder) and the MEMD baseline (its one stage: encoder and decoder); MENET (8
  residual blocks with channel attention, GB task weighting); the intensity-aware network; JRGR in its joint stage (seven
  networks, generator update plus the three discriminator updates, with a batch of unpaired real
  crops). Widths are the package defaults (the papers' sizes); weights are random.
* **Training** at the paper's crop and batch: ERL-Net/MEMD 320x320 batch 1, MENET 224x224 batch 20,
  intensity-aware 256x256 batch 1 (the paper gives batch 1 but no crop), JRGR 256x256 batch 16
  (`--batches=method:N` replaces a paper batch; the *batch* column then shows both).
  *s/step* is the mean wall time of one `tf.function(trainer.train_step, jit_compile=XLA)` call (inputs
  already in memory, loss fetched) over the timed steps; *steps/s* its inverse; *images/s* = batch x
  steps/s. *first step s* is the first call alone: tracing, XLA compilation, oneDNN set-up.
  *precision* `mixed` is `erl_derain.distribute.set_precision(True)`: mixed_bfloat16 on CPU,
  mixed_float16 on GPU (variables stay float32). *peak RSS MiB* is the measurement process's peak
  resident memory (`ru_maxrss`: Python, TensorFlow, the networks, optimizer states and the step);
  *GPU peak MiB* (only with a GPU) is `tf.config.experimental.get_memory_info('GPU:0')['peak']`.
* **Inference** through the exported SavedModel: `erl_derain.serving.export_saved_model` of the
  inference network into a temporary folder (*export MiB*: its size on disk), then a process that only
  loads it (`tf.saved_model.load`) and calls the `serving_default` signature on one size x size image
  (float32, batch 1; the graph pads to the network's multiple and crops back). *s/image* is the median
  over the timed calls, *MP/s* megapixels per second, *peak RSS MiB* that of the loading process.
* **Input pipeline**: examples/s of `erl_derain.data.pipelines.paired_dataset` alone (no model) on the
  embedded `synthetic_rain` training stream (TFRecords: PNG decoding, random crops and flips,
  batching), at the method's crop and batch, against the training images/s (float32, no XLA). Ratio > 1:
  the pipeline is faster than the model can consume, so it is not the bottleneck. On a CPU the pipeline
  and the training step share the same cores, so a real run gets somewhat less than both figures.
  synthetic_rain's training images are 256x256 tiles: crops larger than that are measured at 256x256
  (the *tf.data crop* column; the same images are decoded, only the crop is smaller).
* **Work and rate**: *GMAC/MP* is the inference network's multiply-adds per megapixel
  (`erl_derain.flops.count_macs` on its traced graph at 512x512: every `Conv2D`, depthwise,
  transposed-convolution and `MatMul` op, from its static shapes; additions and activations not
  counted); the inference *GFLOP/s* is 2 x GMAC/MP x the image's megapixels / s/image (median).
  *GMAC/step* counts the traced training step's graph the same way (forward, input and kernel
  gradients, every network the step updates, losses included); its *GFLOP/s* is 2 x GMAC/step /
  s/step. *% of peak* compares that with this machine's peak for the same work, measured in the
  same run (the *peak* rows, one process per method): 4 chained 3x3 'same' convolutions C -> C on
  a 1x256x256xC batch in one `tf.function` call, C the network's *typical width* (the `Conv2D` output
  width doing the most multiply-adds), the best of 5 timed calls, in float32 and bfloat16. Float32
  rows are compared with the float32 peak, `mixed` training with the bfloat16 one (on a GPU, mixed
  precision is float16: the bfloat16 peak is only a stand-in there). The networks also spend time
  in ops that do no multiply-adds (activations, normalisation, concatenation, padding), so 100 % is
  out of reach; the gap shows how far a method is from compute-bound.
* **Scaling with crop size**: the training step (batch 1, float32, no XLA) at each crop; *x pixels*,
  *x time* and *x RSS* are relative to the method's smallest measured crop. JRGR's U-Nets need sides
  that are multiples of 128, so 320 is skipped for it.
"""


def page(machine: dict, command: str, rows: list[dict], tabs: dict[str, str], smoke: bool,
         notes: list[str] = ()) -> str:
    parts = [INTRO, "## This run\n", f"    {command}\n", *[ln for ln in machine_lines(machine)], ""]
    parts += [f"* Note: {note}" for note in notes]
    if notes:
        parts.append("")
    if smoke:
        parts.append("**Smoke run**: tiny networks and sizes, one step; the figures only show that every path "
                     "works. Rows marked \"shared process\" ran after others in the same process (--noisolate): "
                     "their peak RSS is that process's running peak.\n")
    titles = {"train": "Training at the paper's crop and batch", "inference": "Inference (SavedModel, serving_default)",
              "data": "Input pipeline alone vs training", "scaling": "Training vs crop size (batch 1, float32, no XLA)",
              "peak": "This machine's convolution peak (the reference of '% of peak')"}
    for key in ("train", "inference", "data", "scaling", "peak"):
        if key in tabs:
            parts += [f"## {titles[key]}\n", tabs[key], ""]
    failed = [r for r in rows if r.get("status") in ("error", "timeout")]
    parts.append("## Failures\n")
    if failed:
        for r in failed:
            parts.append(f"* {describe(r)}: {status_text(r, 300)}")
    else:
        parts.append("None: every measurement that ran succeeded.")
    return "\n".join(parts).rstrip() + "\n"


def _has_gpu(machine: dict) -> bool:
    return bool(machine.get("gpus")) or any(d.startswith("GPU") for d in machine.get("devices", []))


def render(args) -> int:
    with open(args.render) as f:
        report = json.load(f)
    argv = report.get("argv")
    command = shlex.join(["python", "benchmarks/suite.py", *argv]) if argv is not None else report["command"]
    settings = report.get("settings", {})
    rows, machine = report["results"], report["machine"]
    text = page(machine, command, rows, tables(rows, _has_gpu(machine)), bool(settings.get("smoke")),
                settings.get("note") or [])
    print(text)
    if args.markdown:
        write_page(args.markdown, text)  # keeps other scripts' marked sections (export_formats.py's)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one is not None:
        return child_main(args.one)
    if args.render is not None:
        return render(args)
    started = time.monotonic()
    machine = machine_info()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "benchmarks/suite.py", *argv])
    print(f"[suite] {machine['cpu']}, {machine['cores']} cores, load average {machine['load_average_start'][0]:.2f}"
          + (" (shared machine)" if machine["shared"] else ""), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="erl_derain_bench_") as tmp:
        plan = build_plan(args, tmp)
        to_run = [r for r in plan if "status" not in r and "same_as" not in r]
        print(f"[suite] {len(plan)} rows, {len(to_run)} measurements, "
              f"{'one process each' if args.isolate else f'one process per method, {args.jobs} at a time'}",
              file=sys.stderr, flush=True)
        results = run_units(args, _units(args, to_run))
    rows = merge_results(plan, results)
    machine["load_average_end"] = list(os.getloadavg())
    machine["duration_s"] = time.monotonic() - started
    env = next((r for r in rows if r.get("tf_version")), None)
    if env:
        machine.update(tf_version=env["tf_version"], keras_version=env["keras_version"], devices=env["devices"])
    tabs = tables(rows, _has_gpu(machine))
    text = page(machine, command, rows, tabs, args.smoke, args.note)
    print(text)
    settings = {k: getattr(args, k) for k in ("method_list", "kind_list", "precision_list", "xla_list",
                                               "variant_methods", "crop_list", "size_list", "skip_list", "steps",
                                               "warmup", "timeout", "isolate", "jobs", "smoke", "data_seconds",
                                               "batch_map", "note")}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"command": command, "argv": argv, "machine": machine, "settings": settings,
                       "paper_settings": {m: {"crop": c, "batch": b, "source": s} for m, (c, b, s) in PAPER.items()},
                       "results": rows}, f, indent=1)
    if args.markdown:
        write_page(args.markdown, text)  # keeps other scripts' marked sections (export_formats.py's)
    failed = [r for r in rows if r.get("status") in ("error", "timeout")]
    print(f"[suite] done in {machine['duration_s']:.0f} s; {len(failed)} failed row(s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
