"""Where a method's inference time goes: TensorFlow's profiler on the inference network, time per op type.

    python benchmarks/profile_ops.py [--methods=iadn,erlnet,...] [--size=512] [--calls=3] [--top=12]
        [--precision=float32|bfloat16] [--json=PATH] [--markdown=docs/benchmarks.md] [--note=TEXT]

For each method (default widths, float32 unless ``--precision``), builds the inference model the
package serves (``trainer.inference_model()``, padding and clipping included), calls it once to warm
up, then traces ``--calls`` calls of one ``--size`` x ``--size`` image with ``tf.profiler.experimental``
and reads the trace (XSpace protobuf): the op-kernel events of the executor threads (``tf_Compute``) of the host plane, summed by op type and
divided by the number of calls. Prints, per method, the wall seconds per call, the op time per call
(ops run on two threads can overlap, so the op time is not the wall time), and the op types that cost
the most with their share. Convolutions are split as the graph names them: ``Conv2D`` (also oneDNN's
fused and native forms), ``DepthwiseConv2dNative``, and ``SpaceToBatchND``/``BatchToSpaceND`` (the
reshuffles TensorFlow wraps around a dilated convolution when ``tf.nn.convolution`` is asked for one).
``--markdown`` writes the tables as the page's ``profile`` section.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import marked_section, write_section  # noqa: E402


_OP_EVENT = re.compile(r"^[^:]+:([A-Za-z0-9_]+)$")


def op_times(logdir: str) -> dict:
    """{op type: total seconds} of the TensorFlow-op events of the host plane(s) of a trace in ``logdir``."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals: dict = defaultdict(float)
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            names = {k: m.name for k, m in plane.event_metadata.items()}
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):  # the executor threads that run the op kernels
                    continue
                for event in line.events:
                    # an op kernel's event is named "<op name>:<op type>" (executor events have "::")
                    match = _OP_EVENT.match(names.get(event.metadata_id, ""))
                    if match:
                        totals[match.group(1)] += event.duration_ps * 1e-12
    return dict(totals)


def profile(method: str, size: int, calls: int, precision: str) -> dict:
    import tensorflow as tf

    from erl_derain import distribute
    from erl_derain.methods import make_trainer
    from erl_derain.run_config import RunConfig, make_record

    distribute.set_precision(False)
    record = make_record(method, RunConfig(crop_size=256))
    trainer = make_trainer(record)
    trainer.build_networks((1, 64, 64, 3))
    if precision == "bfloat16":
        from erl_derain import precision as precision_lib

        trainer = precision_lib.in_precision(trainer, record, "bfloat16")
    model = trainer.inference_model()
    x = tf.random.uniform((1, size, size, 3), seed=0)
    fn = tf.function(lambda t: model(t))
    fn(x).numpy()
    fn(x).numpy()
    t0 = time.perf_counter()
    fn(x).numpy()
    wall_plain = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(x).numpy()
        wall = (time.perf_counter() - t0) / calls
        tf.profiler.experimental.stop()
        totals = op_times(logdir)
    per_call = {k: v / calls for k, v in totals.items()}
    return {"method": method, "size": size, "precision": precision, "wall_s": wall_plain,
            "wall_traced_s": wall, "op_s": sum(per_call.values()), "by_type": per_call}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="iadn")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None, help="write the 'profile' section of this page")
    p.add_argument("--note", action="append", default=[], help="a line under the tables (with --markdown)")
    args = p.parse_args()
    rows, lines = [], []
    for method in args.methods.split(","):
        r = profile(method, args.size, args.calls, args.precision)
        rows.append(r)
        block = [f"{method} {args.size}x{args.size} {args.precision}: {r['wall_s']:.3f} s/call "
                 f"(traced {r['wall_traced_s']:.3f}), op time {r['op_s']:.3f} s/call", "",
                 "| op type | s/call | share of op time |", "|---|---|---|"]
        for kind, s in sorted(r["by_type"].items(), key=lambda kv: -kv[1])[:args.top]:
            block.append(f"| {kind} | {s:.4f} | {100 * s / r['op_s']:.1f}% |")
        print("\n" + "\n".join(block), flush=True)
        lines += [*block, ""]
    if args.markdown:
        command = "python benchmarks/profile_ops.py " + " ".join(a for a in sys.argv[1:] if not a.startswith("--note"))
        text = ["Time per op type of the inference network (TensorFlow's profiler; ops on two threads overlap, so "
                "the op time exceeds the wall time).", "", *lines, *(f"* {n}" for n in args.note)]
        write_section(args.markdown, marked_section("profile", "benchmarks/profile_ops.py",
                                                    "Where inference time goes (profiler)", command, text))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
