"""benchmarks/suite.py: the smoke run end to end (every method, every measurement kind) and its pure
helpers against hand-worked examples."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"
METHODS = ("erlnet", "memd", "menet", "iadn", "jrgr")
KINDS = ("train", "inference", "data", "scaling", "peak")


def _load_suite():
    spec = importlib.util.spec_from_file_location("benchmark_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


suite = _load_suite()

# Figures each kind must carry (positive and finite) when its row succeeded.
FIGURES = {
    "train": ("step_s", "steps_per_s", "images_per_s", "first_step_s", "peak_rss_mib", "macs_per_step", "gflops"),
    "scaling": ("step_s", "steps_per_s", "images_per_s", "peak_rss_mib"),
    "inference": ("latency_s", "min_latency_s", "megapixels_per_s", "peak_rss_mib", "export_mib", "params",
                  "macs_per_mp", "gflops", "pct_of_peak"),
    "data": ("examples_per_s", "data_crop"),
    "export": ("export_mib", "export_s", "params", "macs_per_mp", "conv_width"),
    "peak": ("conv_width", "peak_gflops_float32"),
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    json_path, md_path = tmp / "results.json", tmp / "benchmarks.md"
    proc = subprocess.run([sys.executable, str(SUITE), "--smoke", f"--json={json_path}", f"--markdown={md_path}"],
                          capture_output=True, text=True, timeout=600)
    return proc, json_path, md_path


def test_smoke_run_covers_every_method_and_kind(smoke):
    proc, json_path, md_path = smoke
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(json_path.read_text())
    rows = report["results"]
    assert report["settings"]["smoke"] is True
    assert report["machine"]["cores"] >= 1 and report["machine"]["tf_version"]
    for method in METHODS:
        for kind in KINDS:
            mine = [r for r in rows if r["method"] == method and r["kind"] == kind]
            assert mine, f"no {kind} row for {method}"
        # float32 without XLA training and every inference row must succeed
        base = [r for r in rows if r["method"] == method and r["kind"] == "train"
                and r["precision"] == "float32" and r["xla"] is False]
        assert len(base) == 1 and base[0]["status"] == "ok", base
        inference = [r for r in rows if r["method"] == method and r["kind"] == "inference"]
        assert {r["size"] for r in inference} == {32, 64}
        assert all(r["status"] == "ok" for r in inference), inference
    # erlnet is measured at every precision x XLA combination in the smoke run
    variants = {(r["precision"], r["xla"]) for r in rows if r["method"] == "erlnet" and r["kind"] == "train"}
    assert variants == {("float32", False), ("float32", True), ("mixed", False), ("mixed", True)}
    for r in rows:
        assert r["status"] in ("ok", "error", "timeout", "skipped"), r
        if r["status"] == "ok":
            for key in FIGURES[r["kind"]]:
                value = r[key]
                assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (r["kind"], key, r)
        elif r["status"] in ("error", "timeout"):
            assert isinstance(r["error"], str) and r["error"], r
        else:
            assert r["reason"], r
    train_ok = [r for r in rows if r["kind"] == "train" and r["status"] == "ok"]
    for r in train_ok:
        assert r["images_per_s"] == pytest.approx(r["batch"] * r["steps_per_s"])
        assert r["gflops"] == pytest.approx(2 * r["macs_per_step"] / r["step_s"] / 1e9)
    for r in (r for r in rows if r["kind"] == "inference" and r["status"] == "ok"):
        assert r["gflops"] == pytest.approx(2 * r["macs_per_mp"] * r["size"] ** 2 / 1e6 / r["latency_s"] / 1e9)
        peak = next(p for p in rows if p["kind"] == "peak" and p["method"] == r["method"])
        assert r["pct_of_peak"] == pytest.approx(100 * r["gflops"] / peak["peak_gflops_float32"])
    text = md_path.read_text()
    assert text.strip() == proc.stdout.strip()
    for header in ("| method | crop | batch | precision | XLA | s/step | steps/s | images/s |",
                   "| method | parameters | export MiB | size | s/image (median) |",
                   "| method | crop | batch | tf.data crop | tf.data examples/s | training images/s |",
                   "| method | crop | x pixels | s/step | x time | peak RSS MiB |",
                   "| method | conv width | convolutions per call | float32 GFLOP/s | bfloat16 GFLOP/s |",
                   "GMAC/step | GFLOP/s | % of peak | status |", "GMAC/MP | GFLOP/s | % of peak | status |",
                   "## How to run", "## This run", "* Machine:", "## Failures"):
        assert header in text, header


def test_fmt_significant_digits():
    assert suite.fmt(0.012345) == "0.0123"
    assert suite.fmt(1.2345) == "1.23"
    assert suite.fmt(123.45) == "123"
    assert suite.fmt(98765.4) == "98765"
    assert suite.fmt(0.5, 2) == "0.50"
    assert suite.fmt(1018.4, 4) == "1018"
    assert suite.fmt(0) == "0"
    assert suite.fmt(None) == "—" and suite.fmt(float("nan")) == "—"


def test_markdown_table():
    text = suite.markdown_table(["a", "b|c"], [[1, "x|y"], ["two\nlines", 2.5]])
    assert text == ("| a | b\\|c |\n"
                    "|---|---|\n"
                    "| 1 | x\\|y |\n"
                    "| two lines | 2.5 |")


def test_relative_and_bottleneck():
    assert suite.relative([None, 2.0, 3.0, None]) == [None, 1.0, 1.5, None]
    assert suite.relative([None]) == [None]
    # 300 examples/s against 12 images/s: 25x headroom; 10 against 20: 2x too slow
    assert suite.bottleneck(300.0, 12.0) == "no: the pipeline alone is 25x faster"
    assert suite.bottleneck(10.0, 20.0) == "yes: the pipeline alone is 2.0x slower"
    assert suite.bottleneck(None, 20.0) == "—"


def test_error_line_and_status_text():
    keras_error = ("InvalidArgumentError: Exception encountered when calling MENET.call().\n\n\x1b[1m"
                   "{{function_node __wrapped__AddV2_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
                   "Incompatible shapes: [1,16,16,4] vs. [1,16,16,2] [Op:AddV2] name: \x1b[0m\n\nArguments ...")
    assert suite.error_line(keras_error) == ("InvalidArgumentError: Incompatible shapes: [1,16,16,4] vs. "
                                             "[1,16,16,2] [Op:AddV2] name:")
    assert suite.error_line("ValueError: bad\nmore") == "ValueError: bad"
    assert suite.status_text({"status": "error", "error": "ValueError: bad"}) == "error: ValueError: bad"
    assert suite.status_text({"status": "timeout", "error": "timeout: no result within 9 s"}) == \
        "timeout: no result within 9 s"
    assert suite.status_text({"status": "skipped", "reason": "too slow"}) == "skipped (too slow)"
    assert suite.status_text({"status": "ok", "note": "at 256", "isolated": True, "peak_rss_mib": 1.0}) == "ok (at 256)"
    assert suite.status_text({"status": "error", "error": "x" * 300}, width=20) == "error: " + "x" * 12 + "…"


def test_plan_dedupes_and_skips():
    args = suite.parse_args(["--methods=erlnet,jrgr", "--precisions=float32", "--xla=false",
                             "--crop_sizes=256,320,512", "--inference_sizes=256"])
    plan = suite.build_plan(args, "/tmp/x")
    scaling = {(r["method"], r["crop"]): r for r in plan if r["kind"] == "scaling"}
    # ERL-Net's paper setting is 320x320 batch 1: the sweep's 320 row reuses that measurement
    assert scaling["erlnet", 320]["same_as"]["kind"] == "train"
    assert "same_as" not in scaling["erlnet", 256]
    assert scaling["jrgr", 512]["status"] == "skipped"  # the full-mode default --skip
    data = [r for r in plan if r["kind"] == "data"]
    assert [(r["method"], r["crop"], r["batch"]) for r in data] == [("erlnet", 320, 1), ("jrgr", 256, 16)]
    assert [r["kind"] for r in plan if r["method"] == "erlnet"].count("export") == 1


def test_render_rewrites_the_page_from_json(tmp_path, capsys):
    machine = {"cpu": "Test CPU", "cores": 2, "usable_cores": 2, "ram_gib": 8.0, "gpus": [], "python": "3.11",
               "tf_version": "2.21.0", "keras_version": "3", "platform": "Linux", "date": "2026-01-01 00:00 UTC",
               "load_average_start": [0.5, 0.5, 0.5], "shared": False, "duration_s": 60.0}
    rows = [{"kind": "train", "method": "menet", "crop": 224, "batch": 20, "precision": "float32", "xla": False,
             "status": "ok", "step_s": 2.0, "steps_per_s": 0.5, "images_per_s": 10.0, "first_step_s": 5.0,
             "peak_rss_mib": 1500.0},
            {"kind": "data", "method": "menet", "crop": 224, "batch": 20, "status": "ok", "data_crop": 224,
             "examples_per_s": 250.0}]
    rows[0]["macs_per_step"] = 30e9
    rows[0]["gflops"] = 30.0  # as task_train computes it: 2 x macs_per_step / step_s
    rows += [{"kind": "export", "method": "menet", "status": "ok", "params": 1000, "export_mib": 1.0,
              "macs_per_mp": 40e9, "conv_width": 64},
             {"kind": "inference", "method": "menet", "size": 500, "status": "ok", "latency_s": 0.5,
              "min_latency_s": 0.4, "megapixels_per_s": 0.5, "first_call_s": 1.0, "peak_rss_mib": 900.0,
              "params": 1000, "export_mib": 1.0},
             {"kind": "peak", "method": "menet", "side": 256, "chain": 4, "status": "ok", "conv_width": 64,
              "peak_gflops_float32": 120.0, "peak_gflops_bfloat16": 240.0}]
    suite.add_rates(rows)
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"command": "x", "argv": ["--methods=menet", "--note=a b"], "machine": machine,
                                "settings": {"smoke": False, "note": ["a b"]}, "results": rows}))
    md = tmp_path / "page.md"
    assert suite.main([f"--render={path}", f"--markdown={md}"]) == 0
    text = md.read_text()
    assert "python benchmarks/suite.py --methods=menet '--note=a b'" in text
    assert "* Note: a b" in text and "shared" not in text.split("## This run")[1].split("##")[0]
    # 2 x 30 GMAC/step / 2.0 s/step = 30 GFLOP/s: 25 % of the 120 GFLOP/s float32 peak
    assert "| MENET | 224 | 20 | float32 | off | 2.00 | 0.500 | 10.0 | 5.00 | 1500 | 30.0 | 30.0 | 25 | ok |" in text
    # 2 x 40 GMAC/MP x 0.25 MP / 0.5 s/image = 40 GFLOP/s: 33 % of 120
    assert ("| MENET | 1,000 | 1.00 | 500x500 | 0.500 | 0.400 | 0.500 | 1.00 | 900.0 | 40.0 | 40.0 | 33 | ok |"
            in text)
    assert "| MENET | 64 | 4 x 3x3, 1x256x256x64 | 120 | 240 | ok |" in text
    # 250 examples/s against 10 images/s: 25x
    assert ("| MENET | 224x224 | 20 | 224x224 | 250 | 10.0 (float32, XLA off) | 25.0 | "
            "no: the pipeline alone is 25x faster | ok |") in text
    assert capsys.readouterr().out.strip() == text.strip()


def test_marked_sections_replace_only_their_own(tmp_path):
    """A script's section (timing.marked_section + write_section) is replaced in place on a re-run,
    and survives the suite rewriting the rest of the page (write_page)."""
    sys.path.insert(0, str(SUITE.parent))
    import timing

    page = tmp_path / "page.md"
    page.write_text("# Page\n\ngenerated text\n")
    first = timing.marked_section("precision", "benchmarks/precision.py", "Title", "python x.py --a", ["| a |", "1"])
    timing.write_section(str(page), first)
    timing.write_section(str(page), timing.marked_section("profile", "benchmarks/profile_ops.py", "P", "p", ["x"]))
    timing.write_section(str(page), first.replace("| a |", "| b |"))
    text = page.read_text()
    assert text.count("<!-- precision: begin") == 1 and "| b |" in text and "| a |" not in text
    assert text.index("precision: begin") < text.index("profile: begin")  # replaced where it was
    assert "    python x.py --a" in text and "cores" in text  # the command and the machine line
    timing.write_page(str(page), "# Page\n\nnew suite text\n")
    text = page.read_text()
    assert "new suite text" in text and "generated text" not in text
    assert "| b |" in text and "<!-- profile: end -->" in text
