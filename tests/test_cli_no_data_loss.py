"""Issue 26, "Nothing lost, nothing unbounded", at the command line: a refused ``train`` changes nothing
in its ``--model_dir`` (1); unwritable outputs are refused before the model loads (5); ``evaluate``
names the pair it cannot score and keeps the rows it finished (6); the verbs agree on failures, usage
errors and Ctrl-C (8); ``export`` writes only under ``--serving_root`` (9); ``evaluate`` with the
bundled model, absolute dataset paths and atomic result files (10). Tiny networks, 40x48 images."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from absl import flags

from erl_derain import pretrained

from .conftest import TINY_FLAGS, make_folder_dataset, run_settings

SIZE = (40, 48)
TRAIN = ("--crop_size=16", "--batch_size=2", "--jit_compile=false", "--noevaluate_after")
MEMD = ("--method=memd", "--stage_steps=2", *TINY_FLAGS)
WIDER = ("--erl_widths=16,32",)  # another architecture than TINY_FLAGS' 8,16


def _cli_quiet(*args: str) -> int:
    from erl_derain import cli

    flags.FLAGS.unparse_flags()
    try:
        return cli.main(flags.FLAGS(["erl-derain", *args])) or 0
    finally:
        flags.FLAGS.unparse_flags()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny MEMD run (2 steps) shared by the tests that only read it (derain, evaluate, export)."""
    root = tmp_path_factory.mktemp("no_data_loss")
    data = make_folder_dataset(root / "data", n=2, size=SIZE)
    model_dir = root / "run"
    assert _cli_quiet("train", f"--model_dir={model_dir}", f"--dataset=folder:{data}", *TRAIN, *MEMD) == 0
    return model_dir


@pytest.fixture
def cli(run_cli):
    """``run_cli`` that turns a KeyboardInterrupt escaping the command into a test failure (outside
    pytest it is the Python traceback the issue is about), instead of stopping the session."""

    def run(*args: str):
        try:
            return run_cli(*args)
        except KeyboardInterrupt as e:
            pytest.fail(f"KeyboardInterrupt escaped `erl-derain {args[0]}` (a traceback): {e!r}")

    return run


def _snapshot(folder: Path) -> dict:
    """Every file below ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _photo(path: Path, seed: int = 0, size=SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), (rng.random((*size, 3)) * 255).astype(np.uint8))
    return path


def _no_model_load(monkeypatch):
    """Make any model load fail the test: the refusals under test must come before it."""
    from erl_derain import pretrained, training

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(training, "load_trainer", loaded)
    monkeypatch.setattr(pretrained, "load_pretrained_trainer", loaded)


def _lines_naming(text: str, name: str) -> int:
    return sum(name in line for line in text.splitlines())


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# -- 1. a refused train changes nothing in --model_dir; --force_new_config sets the old run aside ---------


def test_train_with_another_architecture_is_refused_and_changes_nothing(cli, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=2, size=SIZE)
    model_dir = tmp_path / "run"
    common = (f"--model_dir={model_dir}", f"--dataset=folder:{data}", *TRAIN, *TINY_FLAGS, "--method=memd")
    code, _, err = cli("train", *common, "--stage_steps=3", "--stop_after=2")
    assert code == 0, err
    before = _snapshot(model_dir)
    assert {"config.json", "flags.txt", "checkpoints/checkpoint"} <= set(before)

    code, out, err = cli("train", *common, "--stage_steps=3", *WIDER, "--lr=1e-3")
    changed = [name for name in before if _snapshot(model_dir).get(name) != before[name]]
    assert changed == [] and _snapshot(model_dir) == before  # config.json, flags.txt, checkpoints, logs: byte for byte
    assert run_settings(model_dir)["erl_widths"] == (8, 16)
    assert code == 2, err
    assert "--erl_widths: 8,16 (the run's) -> 16,32 (now)" in err and "--lr: 0.0004 (the run's) -> 0.001 (now)" in err
    assert "--force_new_config" in err and "nothing in it was changed" in err and "Traceback" not in err

    # changed settings that fit the checkpoint: listed, and the run resumes with them
    code, out, err = cli("train", *common, "--stage_steps=4", "--lr=1e-3")
    assert code == 0, err
    assert f"Resuming {model_dir} with changed settings:" in out
    assert "--lr: 0.0004 (the run's) -> 0.001 (now)" in out and "--stage_steps: 3 (the run's) -> 4 (now)" in out
    assert "steps 2->4" in out and run_settings(model_dir)["lr"] == 1e-3  # resumed, not restarted

    # the run is whole: it evaluates (the refused run of the old code had made that impossible)
    code, _, err = cli("evaluate", f"--model_dir={model_dir}", f"--output={tmp_path / 'ev_before'}")
    assert code == 0, err

    # --force_new_config: a new run in model_dir, the old one intact in previous_run_1
    before = _snapshot(model_dir)
    code, out, err = cli("train", *common, "--stage_steps=2", *WIDER, "--force_new_config")
    assert code == 0, err
    old = model_dir / "previous_run_1"
    assert f"the run that was in {model_dir} is now {old}" in out
    assert _snapshot(old) == before
    assert run_settings(old)["erl_widths"] == (8, 16) and run_settings(model_dir)["erl_widths"] == (16, 32)
    assert "--erl_widths=16,32" in (model_dir / "flags.txt").read_text()
    code, out, err = cli("evaluate", f"--model_dir={old}", f"--output={tmp_path / 'ev_old'}")
    assert code == 0, err

    def scores(ev):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(tmp_path / ev / "per_image.csv")]

    assert scores("ev_old") == scores("ev_before")  # the same network's numbers


def test_train_with_another_method_is_a_usage_error_that_changes_nothing(cli, tiny_run):
    before = _snapshot(tiny_run)
    code, _, err = cli("train", f"--model_dir={tiny_run}", f"--dataset=folder:{tiny_run.parent / 'data'}", *TRAIN,
                       *TINY_FLAGS, "--stage_steps=1,1,1")
    assert code == 2 and "holds a run of method 'memd', not 'erlnet'" in err and "--force_new_config" in err
    assert _snapshot(tiny_run) == before


def test_set_aside_runs_are_numbered_and_never_moved_again(tmp_path):
    from erl_derain import training

    run = tmp_path / "run"
    (run / "previous_run_1").mkdir(parents=True)
    (run / "previous_run_1" / "config.json").write_text("first")
    (run / "config.json").write_text("second")
    (run / "checkpoints").mkdir()
    assert training.set_aside_run(str(run)) == str(run / "previous_run_2")
    assert sorted(p.name for p in run.iterdir()) == ["previous_run_1", "previous_run_2"]
    assert (run / "previous_run_1" / "config.json").read_text() == "first"
    assert (run / "previous_run_2" / "config.json").read_text() == "second"
    assert training.set_aside_run(str(run)) is None  # nothing left to move


# -- 5. unwritable outputs are refused before the model loads, naming the flag ------------------------------


def _unwritable_sys_folder() -> str:
    try:
        open("/sys/.erl_derain_probe_check", "x").close()
    except OSError:
        return "/sys/erl_derain_probe_test/out"
    os.unlink("/sys/.erl_derain_probe_check")  # pragma: no cover
    pytest.skip("/sys is writable here")


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
@pytest.mark.parametrize("model", ["bundled", "run"])
def test_derain_into_an_unwritable_output_dir_exits_2_before_the_model_loads(cli, tmp_path, tiny_run,
                                                                             monkeypatch, where, model):
    photo = _photo(tmp_path / "photos" / "a.jpg")
    blocker = tmp_path / "taken"
    blocker.write_bytes(b"someone's file")
    output_dir = {"a file": str(blocker), "under a file": str(blocker / "sub"),
                  "read-only": _unwritable_sys_folder() if where == "read-only" else ""}[where]
    _no_model_load(monkeypatch)
    model_flag = [f"--model_dir={tiny_run}"] if model == "run" else []
    code, out, err = cli("derain", *model_flag, f"--output_dir={output_dir}", str(photo))
    assert code == 2, err
    assert f"--output_dir={output_dir}" in err and "Traceback" not in err and "Errno 17" not in err
    assert {"a file": "is a file, not a folder", "under a file": "is a file, so the folder",
            "read-only": "is not writable"}[where] in err
    assert blocker.read_bytes() == b"someone's file"


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root (the /sys case above covers it)")
def test_derain_into_a_read_only_folder_exits_2_before_the_model_loads(cli, tmp_path, monkeypatch):
    photo = _photo(tmp_path / "a.jpg")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    _no_model_load(monkeypatch)
    try:
        code, _, err = cli("derain", f"--output_dir={ro}", str(photo))
    finally:
        ro.chmod(0o755)
    assert code == 2 and f"--output_dir={ro}" in err and "is not writable" in err


# -- 6. evaluate names the pair it cannot score and keeps what it computed -----------------------------------


@pytest.mark.parametrize("size, border", [((1, 1), 0), ((16, 16), 3)])
def test_evaluate_names_a_pair_too_small_for_ssim_before_scoring_any(cli, tmp_path, tiny_run, size, border):
    data = make_folder_dataset(tmp_path / "data", n=3, size=SIZE)
    make_folder_dataset(tmp_path / "small", n=1, size=size)
    for sub in ("rainy", "clean"):
        os.replace(tmp_path / "small" / sub / "img0.png", data / sub / "img1b.png")  # between img1 and img2
    code, out, err = cli("evaluate", f"--model_dir={tiny_run}", f"--dataset=folder:{data}",
                         f"--crop_border={border}", f"--output={tmp_path / 'ev'}")
    assert code == 1, err
    side = 11 + 2 * border
    assert str(data / "rainy" / "img1b.png") in err and f"{side}x{side}" in err and "Traceback" not in err
    assert "Y-PSNR" not in out  # found before any pair was scored, not after all of them


def _jpeg_pairs(data: Path, n: int, truncate: int) -> None:
    for i in range(n):
        for k, sub in enumerate(("rainy", "clean")):
            _photo(data / sub / f"{i}.jpg", seed=10 * i + k)
    path = data / "rainy" / f"{truncate}.jpg"
    full = path.read_bytes()
    path.write_bytes(full[: len(full) // 2])


def test_evaluate_keeps_the_rows_it_finished_when_a_truncated_jpeg_fails(cli, tmp_path, tiny_run):
    data = tmp_path / "data"
    _jpeg_pairs(data, 4, truncate=2)
    code, out, err = cli("evaluate", f"--model_dir={tiny_run}", f"--dataset=folder:{data}",
                         f"--output={tmp_path / 'ev'}")
    assert code == 1
    assert "reading the data failed" in err and str(data / "rainy" / "2.jpg") in err and "Traceback" not in err
    assert "checkpoint" not in err  # (it spoke of "the last checkpoint is kept": evaluate writes none)
    csv_path = tmp_path / "ev" / "per_image.csv"
    assert str(csv_path) in err
    assert [r["name"] for r in _rows(csv_path)] == ["0", "1"]  # the pairs before it, kept
    assert all(float(r["psnr_y"]) > 0 for r in _rows(csv_path))
    # among several test sets, the one being read is named (not the comma-separated --dataset as a folder)
    other = make_folder_dataset(tmp_path / "other", n=1, size=SIZE)
    code, out, err = cli("evaluate", f"--model_dir={tiny_run}", f"--dataset=folder:{other},folder:{data}",
                         f"--output={tmp_path / 'table'}")
    assert code == 1 and str(data / "rainy" / "2.jpg") in err and "does not exist" not in err
    assert [r["name"] for r in _rows(tiny_run / f"eval_folder_{str(data).replace('/', '_')}_test" /
                                     "per_image.csv")] == ["0", "1"]
    assert "img0" in out  # the first set was scored (its results are in its own folder)


def _in_memory_pairs(sizes):
    import tensorflow as tf

    def gen():
        for i, (h, w) in enumerate(sizes):
            rng = np.random.default_rng(i)
            clean = rng.random((1, h, w, 3), dtype=np.float32)
            yield {"rainy": np.clip(clean + 0.2, 0, 1), "clean": clean, "name": np.array([f"pair{i}".encode()])}

    spec = {"rainy": tf.TensorSpec((1, None, None, 3), tf.float32), "clean": tf.TensorSpec((1, None, None, 3),
                                                                                          tf.float32),
            "name": tf.TensorSpec((1,), tf.string)}
    return tf.data.Dataset.from_generator(gen, output_signature=spec)


@pytest.mark.parametrize("protocol", ["full_y", "ten_crop_rgb"])
def test_evaluate_on_an_unscanned_dataset_names_the_small_pair_and_goes_on(protocol, capsys):
    """TFDS splits are not scanned up front: a pair too small is a failure of that pair (named), the
    rows of the others are kept and handed to on_row as they finish."""
    from erl_derain import evaluation
    from erl_derain.inference import InferenceModel

    model = InferenceModel(lambda x: x * 0.5, 1)
    ds = _in_memory_pairs([SIZE, (1, 1), SIZE])
    failures, seen = [], []
    if protocol == "full_y":
        rows = evaluation.evaluate(model, ds, failures=failures, on_row=seen.append)
        why = "11x11"
    else:
        rows = evaluation.evaluate_ten_crop(model, ds, crop_size=16, failures=failures, on_row=seen.append)
        why = "16x16"
    assert [r["name"] for r in rows] == ["pair0", "pair2"] and seen == rows
    assert [n for n, _ in failures] == ["pair1"] and why in failures[0][1] and "pair1" in failures[0][1]
    assert capsys.readouterr().err.count("FAILED pair1") == 1


def test_cross_dataset_evaluation_keeps_each_datasets_rows_and_its_own_failures(cli, tmp_path, tiny_run,
                                                                              monkeypatch):
    """A pair that cannot be scored in one test set (as in an unscanned TFDS split) fails alone: the
    other sets and the table are written, and each metrics.json lists its own failures only."""
    from erl_derain import cli as cli_module

    a = make_folder_dataset(tmp_path / "a", n=1, size=SIZE)
    b = make_folder_dataset(tmp_path / "b", n=1, size=SIZE)
    sizes = {f"folder:{a}": [SIZE, (1, 1), SIZE], f"folder:{b}": [SIZE, SIZE]}
    monkeypatch.setattr(cli_module, "_eval_dataset", lambda dataset, *args, **kwargs: _in_memory_pairs(sizes[dataset]))
    code, out, err = cli("evaluate", f"--model_dir={tiny_run}", f"--dataset=folder:{a},folder:{b}",
                         f"--output={tmp_path / 'table'}")
    assert code == 1 and "Traceback" not in err
    assert _lines_naming(err, "FAILED pair1") == 1 and out.count("1 pair(s) failed") == 1
    assert [r["tested_on"] for r in _rows(tmp_path / "table" / "cross_dataset.csv")] == [f"folder:{a}", f"folder:{b}"]
    result = {}
    for name, folder in (("a", a), ("b", b)):
        eval_dir = tiny_run / f"eval_folder_{str(folder).replace('/', '_')}_test"
        result[name] = json.loads((eval_dir / "metrics.json").read_text())
        assert [r["name"] for r in _rows(eval_dir / "per_image.csv")] == (
            ["pair0", "pair2"] if name == "a" else ["pair0", "pair1"])
    assert [f["name"] for f in result["a"]["failed"]] == ["pair1"] and "failed" not in result["b"]


# -- 8. the verbs agree on failures, usage errors and Ctrl-C -------------------------------------------------


def test_derain_reports_a_missing_input_and_goes_on(cli, tmp_path, tiny_run):
    good = _photo(tmp_path / "a.jpg")
    missing = tmp_path / "missing.jpg"
    code, out, err = cli("derain", f"--model_dir={tiny_run}", f"--output_dir={tmp_path / 'out'}", str(good),
                         str(missing))
    assert code == 1, err
    assert (tmp_path / "out" / "a.png").exists()
    assert _lines_naming(err, str(missing)) == 1 and "no such file or folder" in err
    assert "De-rained 1 image(s)" in out and "1 failed" in out


def test_derain_lists_a_failed_photo_once(cli, tmp_path, tiny_run):
    photos = tmp_path / "photos"
    _photo(photos / "good.png")
    (photos / "broken.png").write_bytes(b"not an image")
    code, out, err = cli("derain", f"--model_dir={tiny_run}", f"--output_dir={tmp_path / 'out'}", str(photos))
    assert code == 1 and (tmp_path / "out" / "good.png").exists()
    assert _lines_naming(err, "broken.png") == 1 and "1 failed" in out  # listed once, not twice


@pytest.mark.parametrize("args", [(), ("{out}",)])
def test_derain_without_photos_is_a_usage_error(cli, tmp_path, monkeypatch, args):
    out = tmp_path / "out"
    _photo(out / "earlier.png")
    _no_model_load(monkeypatch)
    args = [a.format(out=out) for a in args]  # none, or a folder of earlier outputs only: nothing to de-rain
    code, _, err = cli("derain", f"--output_dir={out}", *args)
    assert code == 2 and "Traceback" not in err
    assert ("give the photos" if not args else f"--output_dir={out}") in err


def _pairs_written(out: Path) -> tuple[list[str], list[str]]:
    return tuple(sorted(p.name for p in (out / sub).glob("*")) if (out / sub).exists() else []
                 for sub in ("rainy", "clean"))


def test_synthesize_goes_on_past_a_bad_clean_image(cli, tmp_path):
    clean = tmp_path / "clean_photos"
    for name in ("a", "c"):
        _photo(clean / f"{name}.png", seed=ord(name))
    (clean / "b.png").write_bytes(b"not an image")
    code, out, err = cli("synthesize", f"--clean_dir={clean}", f"--output_dir={tmp_path / 'out'}")
    assert code == 1, err
    assert _pairs_written(tmp_path / "out") == (["a.png", "c.png"], ["a.png", "c.png"])
    assert _lines_naming(err, str(clean / "b.png")) == 1
    assert "Wrote 2 rainy/clean pairs" in out and "1 clean image(s) failed" in out


def test_synthesize_never_leaves_half_a_pair(cli, tmp_path, monkeypatch):
    from erl_derain.data import rain_synthesis

    clean = tmp_path / "clean_photos"
    for name in ("a", "b", "c"):
        _photo(clean / f"{name}.png", seed=ord(name))
    real_save = rain_synthesis.save_rgb

    def save(path, image, *args, **kwargs):
        if path.endswith(os.path.join("clean", "b.png")):
            raise OSError(28, "No space left on device", path)
        return real_save(path, image, *args, **kwargs)

    monkeypatch.setattr(rain_synthesis, "save_rgb", save)
    code, _, err = cli("synthesize", f"--clean_dir={clean}", f"--output_dir={tmp_path / 'out'}")
    assert code == 1 and "No space left on device" in err and "Traceback" not in err
    rainy, clean_out = _pairs_written(tmp_path / "out")
    assert rainy == clean_out == ["a.png"]  # b's rainy image went with its clean one


def test_ctrl_c_in_derain_exits_130_with_a_summary(cli, tmp_path, tiny_run, monkeypatch):
    from erl_derain import inference

    for name in "abc":
        _photo(tmp_path / "photos" / f"{name}.jpg", seed=ord(name))
    real = inference.derain_file

    def derain_file(model, path, out_path, **kwargs):
        if path.endswith("b.jpg"):
            raise KeyboardInterrupt
        return real(model, path, out_path, **kwargs)

    monkeypatch.setattr(inference, "derain_file", derain_file)
    code, out, err = cli("derain", f"--model_dir={tiny_run}", f"--output_dir={tmp_path / 'out'}",
                         str(tmp_path / "photos"))
    assert code == 130 and "Traceback" not in err
    assert "Interrupted: De-rained 1 image(s) into" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]  # nothing half-written


def test_ctrl_c_in_synthesize_exits_130_with_whole_pairs(cli, tmp_path, monkeypatch):
    from erl_derain.data import rain_synthesis

    clean = tmp_path / "clean_photos"
    for name in ("a", "b", "c"):
        _photo(clean / f"{name}.png", seed=ord(name))
    real_save = rain_synthesis.save_rgb

    def save(path, image, *args, **kwargs):
        if path.endswith(os.path.join("clean", "b.png")):
            raise KeyboardInterrupt  # between b's rainy image and its clean one
        return real_save(path, image, *args, **kwargs)

    monkeypatch.setattr(rain_synthesis, "save_rgb", save)
    code, out, err = cli("synthesize", f"--clean_dir={clean}", f"--output_dir={tmp_path / 'out'}")
    assert code == 130 and "Traceback" not in err
    assert "Interrupted: wrote 1 rainy/clean pairs" in out
    assert _pairs_written(tmp_path / "out") == (["a.png"], ["a.png"])


def test_ctrl_c_in_evaluate_exits_130_and_keeps_the_rows(cli, tmp_path, tiny_run, monkeypatch):
    from erl_derain import evaluation

    data = make_folder_dataset(tmp_path / "data", n=4, size=SIZE)
    real, calls = evaluation.derain_image, []

    def derain_image(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "derain_image", derain_image)
    code, out, err = cli("evaluate", f"--model_dir={tiny_run}", f"--dataset=folder:{data}",
                         f"--output={tmp_path / 'ev'}")
    assert code == 130 and "Traceback" not in err
    csv_path = tmp_path / "ev" / "per_image.csv"
    assert f"interrupted; the 2 per-image row(s) computed so far are in {csv_path}" in err
    assert [r["name"] for r in _rows(csv_path)] == ["img0", "img1"]


def test_ctrl_c_in_train_exits_130_and_keeps_the_checkpoint(cli, tmp_path, monkeypatch):
    from erl_derain import training

    data = make_folder_dataset(tmp_path / "data", n=2, size=SIZE)
    model_dir = tmp_path / "run"
    common = (f"--model_dir={model_dir}", f"--dataset=folder:{data}", *TRAIN, *TINY_FLAGS, "--method=memd",
              "--stage_steps=4", "--checkpoint_every=2")
    real = training.CheckpointHook.after_step

    def after_step(self, loop, step, logs):
        real(self, loop, step, logs)
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.CheckpointHook, "after_step", after_step)
    code, out, err = cli("train", *common)
    assert code == 130 and "Traceback" not in err
    ckpt = model_dir / "checkpoints" / "ckpt-2"  # written at step 2, before the interrupt at step 3
    assert f"interrupted; the last checkpoint, {ckpt}, is kept; the same command resumes from it" in err
    import tensorflow as tf

    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")) == str(ckpt)


# -- 9. export: --pretrained is not --model_dir; everything under --serving_root ----------------------------


def test_export_pretrained_with_a_model_dir_is_refused(cli, tmp_path, tiny_run, monkeypatch):
    _no_model_load(monkeypatch)
    code, _, err = cli("export", "--pretrained", f"--model_dir={tiny_run}", f"--export_base={tmp_path / 'm'}")
    assert code == 2 and "--pretrained" in err and f"--model_dir={tiny_run}" in err
    assert list(tmp_path.iterdir()) == []


def test_export_writes_everything_under_serving_root(cli, tmp_path, tiny_run):
    root = tmp_path / "serving"
    export_base = root / "team" / "erlnet"
    code, out, err = cli("export", f"--model_dir={tiny_run}", f"--export_base={export_base}",
                         f"--serving_root={root}")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serving"]  # nothing beside the root
    assert sorted(p.name for p in root.iterdir()) == [".models.config.lock", "batching_parameters.txt",
                                                      "models.config", "models.docker.config", "team"]
    assert sorted(p.name for p in (root / "team").iterdir()) == ["erlnet"]  # not in export_base's parent
    assert sorted(p.name for p in export_base.iterdir()) == ["1"]
    assert 'base_path: "/models/team/erlnet"' in (root / "models.docker.config").read_text()
    assert f'base_path: "{export_base}"' in (root / "models.config").read_text()
    assert f"-v {root}:/models " in out and f"Server files in {root} (--serving_root)" in out

    # an export_base outside the root is refused before anything is written
    code, _, err = cli("export", f"--model_dir={tiny_run}", f"--export_base={tmp_path / 'elsewhere' / 'm'}",
                       f"--serving_root={root}")
    assert code == 2 and "is not inside --serving_root" in err
    assert not (tmp_path / "elsewhere").exists()


# -- 10. evaluate with the bundled model, absolute dataset paths, atomic result files ------------------------


def test_evaluate_without_model_dir_uses_the_bundled_model(cli, tmp_path, monkeypatch):
    make_folder_dataset(tmp_path / "data", n=2, size=SIZE)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("evaluate", "--dataset=folder:data", "--output=ev")  # a relative path
    assert code == 0, err
    assert "bundled" in out
    summary = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert summary["dataset"] == f"folder:{tmp_path / 'data'}" and summary["pretrained"] == pretrained.DEFAULT
    assert summary["model_dir"] is None and summary["num_images"] == 2
    assert [r["name"] for r in _rows(tmp_path / "ev" / "per_image.csv")] == ["img0", "img1"]
    assert summary["psnr_y"] > summary["input_psnr_y"]  # the trained model, not a blank network


def test_evaluate_records_absolute_paths(cli, tmp_path, tiny_run, monkeypatch):
    make_folder_dataset(tmp_path / "data", n=2, size=SIZE)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("evaluate", f"--model_dir={os.path.relpath(tiny_run, tmp_path)}", "--dataset=folder:data",
                       "--output=ev")
    assert code == 0, err
    for path in (tmp_path / "ev" / "metrics.json", tiny_run / "metrics.json"):
        assert json.loads(path.read_text())["dataset"] == f"folder:{tmp_path / 'data'}", path
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["model_dir"] == str(tiny_run)


def test_evaluate_replaces_its_result_files_whole(cli, tmp_path, tiny_run):
    """per_image.csv and the cross-dataset tables are replaced by a rename (atomic), never rewritten in
    place: a reader holding the old file (here: a hard link to it) never sees it truncated or mixed."""
    a = make_folder_dataset(tmp_path / "a", n=2, size=SIZE)
    b = make_folder_dataset(tmp_path / "b", n=2, size=SIZE, seed=1)
    table = tmp_path / "table"
    table.mkdir()
    per_image = tiny_run / f"eval_folder_{str(a).replace('/', '_')}_test" / "per_image.csv"
    per_image.parent.mkdir()
    readers = {}
    for target in (table / "cross_dataset.md", table / "cross_dataset.csv", per_image):
        held = tmp_path / f"held_{target.name}"
        held.write_text("the old results\n")
        os.link(held, target)
        readers[target] = held
    code, out, err = cli("evaluate", f"--model_dir={tiny_run}", f"--dataset=folder:{a},folder:{b}",
                         f"--output={table}")
    assert code == 0, err
    for target, held in readers.items():
        assert held.read_text() == "the old results\n", target  # the old file untouched
        assert target.read_text() != "the old results\n" and not os.path.samefile(target, held)
    assert [r["tested_on"] for r in _rows(table / "cross_dataset.csv")] == [f"folder:{a}", f"folder:{b}"]
    assert [r["name"] for r in _rows(per_image)] == ["img0", "img1"]
