"""Size on disk and CPU latency of each export format of the bundled model (issue 23).

    python benchmarks/export_formats.py [--size=512 --reps=5 --threads=0 --markdown=docs/benchmarks.md]

Exports the bundled pretrained ERL-Net (``erl_derain.load_pretrained``) as a SavedModel
(``serving.export_saved_model``), an ONNX file and a LiteRT file (``serving.formats.export_file``),
the file formats both with dynamic sizes (the default) and fixed at ``--size`` (``--export_size``),
into a temporary folder. Then, per format, one ``size`` x ``size`` image (float32, batch 1, a smooth
photo-like image) through the exported model in its own runtime: the SavedModel's
``serving_default`` (``tf.saved_model.load``), onnxruntime (CPU provider), the ``ai_edge_litert``
interpreter; and the Keras ``InferenceModel`` under ``tf.function`` for reference. Latency is the
median (and min) of ``--reps`` calls after one warm-up call, in this process, in rounds that call
each format once (so that a change of the machine's load touches every format alike);
``--threads``: the runtimes' thread count (0: every core, as TensorFlow uses). Also printed: each
output's largest difference from the Keras model's.

``--markdown=docs/benchmarks.md`` writes the table into that page's "Export formats" section
(between its markers; the rest of the page is kept), with the machine and its load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cpu_name, write_section  # noqa: E402

BEGIN, END = "<!-- export-formats: begin (benchmarks/export_formats.py) -->", "<!-- export-formats: end -->"


def dir_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_image(size: int) -> np.ndarray:
    """A smooth photo-like image (as benchmarks/serving_latency.py)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * xx + 2 * yy), 0.5 + 0.3 * np.cos(5 * yy), 0.4 + 0.3 * xx * yy], -1)
    return np.clip(rgb + 0.03 * np.random.default_rng(0).random((size, size, 3)), 0, 1).astype(np.float32)


def measure(args) -> tuple[list[dict], dict]:
    import tensorflow as tf

    from erl_derain import serving
    from erl_derain.pretrained import load_pretrained_trainer
    from erl_derain.serving import formats

    threads = args.threads or os.cpu_count()
    load_start = os.getloadavg()
    trainer, info = load_pretrained_trainer()
    model = trainer.inference_model()
    metadata = {"method": info["record"].method, "config": info["record"].to_dict()}
    image = test_image(args.size)[None]
    keras_fn = tf.function(lambda t: model(t), autograph=False)
    want = keras_fn(tf.constant(image)).numpy()
    entries = []  # measured after every export, interleaved (below)

    def add(name, size_bytes, export_s, fn, note=""):
        entries.append({"format": name, "mib": None if size_bytes is None else size_bytes / 2**20,
                        "export_s": export_s, "fn": fn, "note": note})

    params = int(sum(int(np.prod(v.shape)) for v in model.weights))
    add("Keras InferenceModel (tf.function)", None, None, lambda x: keras_fn(tf.constant(x)).numpy(),
        f"reference; the weights are {params * 4 / 2**20:.2f} MiB as float32")
    with tempfile.TemporaryDirectory(prefix="erl_derain_formats_") as tmp:
        t0 = time.perf_counter()
        path = serving.export_saved_model(model, os.path.join(tmp, "saved_model"), metadata=metadata,
                                          server_config=False)
        export_s = time.perf_counter() - t0
        serve = tf.saved_model.load(path).signatures["serving_default"]
        add("saved_model", dir_size(path), export_s, lambda x: serve(images=tf.constant(x))["derained"].numpy(),
            "dynamic; TensorFlow (serving_default, with its input checks)")
        for fmt in args.formats.split(","):
            for size in (None, (args.size, args.size)):
                t0 = time.perf_counter()
                result = formats.export_file(model, os.path.join(tmp, fmt), fmt, size=size, metadata=metadata,
                                             check=False)
                export_s = time.perf_counter() - t0
                run = formats.load_runner(result["path"], threads=threads)
                runtime = {"onnx": "onnxruntime", "litert": "ai_edge_litert"}[fmt]
                add(f"{fmt}" + ("" if size is None else f" (--export_size={args.size})"), result["bytes"], export_s,
                    run, f"{'dynamic' if size is None else 'fixed'}; {runtime} {formats._version(runtime)}")
        # One warm-up call each, then rounds that call every format once, so that a change of the
        # machine's load while measuring affects the formats alike.
        for e in entries:
            t0 = time.perf_counter()
            got = np.asarray(e["fn"](image))
            e["first_s"], e["max_abs_diff"], e["times"] = time.perf_counter() - t0, float(np.max(np.abs(got - want))), []
        for _ in range(args.reps):
            for e in entries:
                t0 = time.perf_counter()
                np.asarray(e["fn"](image))
                e["times"].append(time.perf_counter() - t0)
    rows = []
    for e in entries:
        times = e.pop("times")
        e.pop("fn")
        rows.append({**e, "median_s": float(np.median(times)), "min_s": float(np.min(times))})
        print(f"[export_formats] {rows[-1]}", file=sys.stderr, flush=True)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average": os.getloadavg(),
               "load_average_start": load_start, "threads": threads, "model": info.get("name", "bundled"),
               "method": info["record"].method, "parameters": params,
               "tensorflow": tf.__version__, "size": args.size, "reps": args.reps}
    return rows, machine


def table(rows: list[dict], machine: dict) -> str:
    lines = ["| format | size on disk MiB | s/image (median) | min s | first call s | export s | "
             "max abs diff vs Keras | runtime |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mib = "—" if r["mib"] is None else f"{r['mib']:.2f}"
        export = "—" if r["export_s"] is None else f"{r['export_s']:.1f}"
        lines.append(f"| {r['format']} | {mib} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['first_s']:.2f} | "
                     f"{export} | {r['max_abs_diff']:.1e} | {r['note']} |")
    return "\n".join(lines)


def section(rows: list[dict], machine: dict, command: str) -> str:
    load = ", ".join(f"{v:.1f}" for v in machine["load_average"])
    start = machine.get("load_average_start")
    load = f"{start[0]:.1f} at the start of the run and {load} at its end" if start else f"{load} at the end of the run"
    return "\n".join([
        BEGIN,
        "## Export formats (the bundled model)",
        "",
        f"`erl-derain export --pretrained --format=saved_model|onnx|litert` of the bundled model "
        f"({machine.get('model', '?')}: {machine.get('method', '?')}, {machine.get('parameters', 0) / 1e6:.2f} M "
        f"parameters), one {machine['size']}x{machine['size']} image (float32, batch 1) through each exported "
        f"file in its own runtime, {machine['threads']} thread(s), median and min of {machine['reps']} calls after "
        "one warm-up, in rounds calling each format once (*first call s*: that warm-up: graph set-up, memory planning). *dynamic* files take any "
        f"size; *fixed* ones were exported with `--export_size={machine['size']}`. Measured with",
        "",
        f"    {command}",
        "",
        f"on {machine['cpu']}, {machine['cores']} cores, no GPU, TensorFlow {machine['tensorflow']}. The machine was "
        f"shared with other work (load average {load}, for {machine['cores']} cores), so the latencies are "
        "upper bounds and their ratios are rough; the *min* column is the closest to an idle machine.",
        "",
        table(rows, machine),
        END,
    ])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime / LiteRT threads (0: every core)")
    p.add_argument("--formats", default="onnx,litert")
    p.add_argument("--markdown", default=None, help="write the section into this page (docs/benchmarks.md)")
    args = p.parse_args(argv)
    command = "python benchmarks/export_formats.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows, machine = measure(args)
    text = section(rows, machine, command.strip())
    print(text)
    if args.markdown:
        write_section(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
