"""Issue 27, "Scale out for real": run folders, evaluation outputs and exports on a file-system URL.

Everything a run writes goes through ``tf.io.gfile`` when its path is a URL (``erl_derain.fileio``);
TensorFlow's in-memory file system (``ram://``, this process only) stands in for ``gs://`` here, so
no cloud is needed. Each test has a ``ram://`` root of its own, and runs with the current folder set
to its ``tmp_path``: a URL taken for a relative local path (``./ram:/...``) would land there, and the
tests check that nothing did. Tiny MEMD networks, 40x48 images, a few steps.

TFDS itself cannot use a ``ram://`` data_dir (its path library, etils.epath, knows no ``ram://``;
and TensorFlow's RAM file system renames one name at a time, so even then TFDS's final rename of
its ``incomplete.*`` folder would leave the files behind): the TFDS test prepares into a local
data_dir with a ``ram://`` model_dir, and a ``ram://`` data_dir is a usage error naming the flag.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from erl_derain import fileio

from .conftest import TINY_FLAGS, make_folder_dataset, run_settings

SIZE = (40, 48)
TRAIN = ("--crop_size=16", "--batch_size=2", "--jit_compile=false", "--noevaluate_after", "--method=memd",
         "--seed=5", *TINY_FLAGS)
gfile = tf.io.gfile


def _ram_root() -> str:
    """A ram:// folder of its own (names of one length: none is a prefix of another, which the RAM
    file system would take for a folder)."""
    return f"ram://{uuid.uuid4().hex}"


@pytest.fixture
def cli(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URL mistaken for a relative local path would be written here
    yield run_cli
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("ram:")], "a ram:// path was written locally"


def _checkpoint_values(path: str) -> dict:
    reader = tf.compat.v1.train.NewCheckpointReader(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "OBJECT_GRAPH" not in name}


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def ram_run(tmp_path_factory):
    """A tiny MEMD run (2 steps) in a ram:// model_dir, trained by the command, and its local data."""
    from absl import flags

    from erl_derain import cli

    data = make_folder_dataset(tmp_path_factory.mktemp("gfile") / "data", n=2, size=SIZE)
    run = f"{_ram_root()}/run"
    flags.FLAGS.unparse_flags()
    try:
        code = cli.main(flags.FLAGS(["erl-derain", "train", f"--model_dir={run}", f"--dataset=folder:{data}",
                                     "--stage_steps=2", *TRAIN]))
    finally:
        flags.FLAGS.unparse_flags()
    assert code in (0, None)
    return run, data


# -- (a) train, stop, resume on ram:// ------------------------------------------------------------------------


def test_train_stopped_and_resumed_on_ram_ends_as_an_uninterrupted_local_run(cli, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=3, size=SIZE)
    run = f"{_ram_root()}/run"
    common = (f"--dataset=folder:{data}", "--stage_steps=2", "--checkpoint_every=1", *TRAIN)
    code, out, err = cli("train", f"--model_dir={run}", *common, "--stop_after=1")
    assert code == 0, err
    assert "Stopped after 1 steps (--stop_after) at global step 1" in out
    for name in ("config.json", "flags.txt"):
        assert gfile.exists(f"{run}/{name}"), name
    assert "--stage_steps=2" in gfile.GFile(f"{run}/flags.txt").read().splitlines()
    assert tf.train.latest_checkpoint(f"{run}/checkpoints") == f"{run}/checkpoints/ckpt-1"

    code, out, err = cli("train", f"--model_dir={run}", *common)  # the same command resumes
    assert code == 0, err
    assert f"Resuming {run} at stage I (#1/1), step 1" in out and "steps 1->2" in out
    latest = tf.train.latest_checkpoint(f"{run}/checkpoints")
    assert latest == f"{run}/checkpoints/ckpt-2"
    assert list(run_settings(run)["stage_steps"]) == [2]

    code, _, err = cli("train", f"--model_dir={tmp_path / 'ref'}", *common)  # uninterrupted, on the local disk
    assert code == 0, err
    ref = _checkpoint_values(tf.train.latest_checkpoint(str(tmp_path / "ref" / "checkpoints")))
    got = _checkpoint_values(latest)
    assert ref and sorted(got) == sorted(ref)
    for name, value in ref.items():  # weights, optimizer slots and counters
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_force_new_config_sets_a_ram_run_aside_with_its_files(cli, ram_run):
    """--force_new_config moves the run into previous_run_1/ file by file (a ram:// folder rename
    would move the folder's name only), and the set-aside run still evaluates."""
    run, data = ram_run
    moved = f"{_ram_root()}/run"
    for folder, _, files in gfile.walk(run):  # a copy of the shared run, to be set aside
        gfile.makedirs(moved + folder[len(run):])
        for name in files:
            gfile.copy(f"{folder}/{name}", f"{moved}{folder[len(run):]}/{name}")
    before = sorted(f"{d[len(moved):]}/{f}" for d, _, files in gfile.walk(moved) for f in files)
    code, out, err = cli("train", f"--model_dir={moved}", f"--dataset=folder:{data}", "--stage_steps=1", *TRAIN,
                         "--erl_widths=16,32", "--force_new_config")
    assert code == 0, err
    assert f"the run that was in {moved} is now {moved}/previous_run_1" in out
    aside = sorted(f"{d[len(moved) + len('/previous_run_1'):]}/{f}"
                   for d, _, files in gfile.walk(f"{moved}/previous_run_1") for f in files)
    assert aside == before  # every file, checkpoints included
    assert list(run_settings(f"{moved}/previous_run_1")["erl_widths"]) == [8, 16]
    assert list(run_settings(moved)["erl_widths"]) == [16, 32]
    code, _, err = cli("evaluate", f"--model_dir={moved}/previous_run_1", f"--dataset=folder:{data}",
                       f"--output={_ram_root()}/ev")
    assert code == 0, err


# -- (b) evaluate into ram:// ---------------------------------------------------------------------------------


def test_evaluate_writes_its_results_into_ram(cli, ram_run, tmp_path):
    run, data = ram_run
    code, out, err = cli("evaluate", f"--model_dir={run}", f"--dataset=folder:{data}")
    assert code == 0, err
    out_dir = f"{run}/eval_folder_{str(data).replace('/', '_')}_test"
    assert sorted(gfile.listdir(out_dir)) == ["metrics.json", "per_image.csv"]  # no temporary file left
    summary = json.loads(gfile.GFile(f"{out_dir}/metrics.json").read())
    assert summary["model_dir"] == run and summary["num_images"] == 2  # the URL, not ./ram:/...
    assert [r["name"] for r in _rows(gfile.GFile(f"{out_dir}/per_image.csv").read())] == ["img0", "img1"]
    latest = json.loads(gfile.GFile(f"{run}/metrics.json").read())  # the run's latest evaluation
    assert latest["psnr_y"] == summary["psnr_y"]

    table = f"{_ram_root()}/table"  # cross-dataset: two test sets, the table in ram://
    other = make_folder_dataset(tmp_path / "other", n=2, size=SIZE, seed=1)
    code, out, err = cli("evaluate", f"--model_dir={run}", f"--dataset=folder:{data},folder:{other}",
                         f"--output={table}")
    assert code == 0, err
    assert sorted(gfile.listdir(table)) == ["cross_dataset.csv", "cross_dataset.md"]
    assert "| trained on \\ tested on |" in gfile.GFile(f"{table}/cross_dataset.md").read()
    assert "| trained on \\ tested on |" in out  # printed from the ram:// file
    assert [r["tested_on"] for r in _rows(gfile.GFile(f"{table}/cross_dataset.csv").read())] == [
        f"folder:{data}", f"folder:{other}"]


def test_compare_writes_its_figures_into_ram(cli, ram_run):
    run, data = ram_run
    out = f"{_ram_root()}/compare"
    code, _, err = cli("compare", f"--baseline={run}", f"--candidate={run}", f"--dataset=folder:{data}",
                       f"--output={out}", "--figures=1")
    assert code == 0, err
    names = sorted(gfile.listdir(out))
    assert {"metrics.json", "per_image.csv", "psnr_histogram.png", "grid.png"} <= set(names), names
    assert not [n for n in names if n.endswith(".tmp")]
    assert gfile.GFile(f"{out}/grid.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_init_from_a_ram_run(cli, ram_run, tmp_path):
    from erl_derain.training import load_trainer

    run, data = ram_run
    code, out, err = cli("train", f"--model_dir={tmp_path / 'tuned'}", f"--dataset=folder:{data}", "--stage_steps=0",
                         *TRAIN, "--seed=6", f"--init_from={run}")  # another initialisation than the source
    assert code == 0, err
    assert f"Starting from the network weights of {run}/checkpoints/ckpt-2 (--init_from)" in out
    source, _ = load_trainer(run)
    tuned, _ = load_trainer(str(tmp_path / "tuned"))
    pairs = [(a, b) for name in source.networks() for a, b in zip(source.networks()[name].weights,
                                                                   tuned.networks()[name].weights)]
    assert pairs
    for a, b in pairs:
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


# -- (c) export into ram:// -----------------------------------------------------------------------------------


def test_export_into_ram_loads_back_and_derains(cli, ram_run):
    from erl_derain.serving import read_export_info
    from erl_derain.training import load_trainer

    run, _ = ram_run
    root = f"{_ram_root()}/serving"
    base = f"{root}/derain"
    code, out, err = cli("export", f"--model_dir={run}", f"--export_base={base}")
    assert code == 0, err
    assert f"Exported SavedModel to {base}/1:" in out and f"Server files in {root} " in out
    assert gfile.listdir(base) == ["1"]  # no staging folder left
    assert sorted(gfile.listdir(root)) == ["batching_parameters.txt", "derain", "models.config",
                                           "models.docker.config"]
    for config in ("models.config", "models.docker.config"):  # a remote root: the URL itself, nothing mounted
        assert f'base_path: "{base}"' in gfile.GFile(f"{root}/{config}").read(), config
    assert read_export_info(f"{base}/1")["model_name"] == "derain"

    loaded = tf.saved_model.load(f"{base}/1")
    x = np.random.default_rng(0).random((1, 21, 30, 3)).astype(np.float32)
    served = loaded.signatures["serving_default"](images=tf.constant(x))["derained"].numpy()
    trainer, _ = load_trainer(run)
    want = trainer.inference_model()(tf.constant(x)).numpy()
    np.testing.assert_allclose(served, want, atol=1e-5)

    code, out, err = cli("export", f"--model_dir={run}", f"--export_base={base}")  # the next version
    assert code == 0, err
    assert sorted(gfile.listdir(base)) == ["1", "2"]
    assert "versions: 2" in gfile.GFile(f"{root}/models.config").read()


def test_litert_export_into_ram(cli, ram_run):
    """The other export formats take the same way: built locally, copied into the version folder."""
    run, _ = ram_run
    base = f"{_ram_root()}/serving/derain"
    code, out, err = cli("export", f"--model_dir={run}", f"--export_base={base}", "--format=litert")
    assert code == 0, err
    assert f"Exported litert file {base}/1/model.tflite" in out
    assert gfile.listdir(base) == ["1"] and sorted(gfile.listdir(f"{base}/1")) == ["erl_derain.json", "model.tflite"]
    model = gfile.GFile(f"{base}/1/model.tflite", "rb").read()
    info = json.loads(gfile.GFile(f"{base}/1/erl_derain.json").read())
    assert model[4:8] == b"TFL3" and info["bytes"] == len(model) and info["version"] == 1


# -- TFDS: a local data_dir with a ram:// model_dir; a ram:// data_dir is refused ----------------------------


def test_tfds_dataset_with_a_ram_model_dir(cli, tmp_path):
    from erl_derain.data.image_io import save_rgb

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        save_rgb(str(photos / f"p{i}.png"), rng.random((32, 40, 3)))
    run = f"{_ram_root()}/run"
    dataset = ("--dataset=synthetic_rain", f"--clean_dir={photos}")
    code, _, err = cli("train", f"--model_dir={run}", *dataset, f"--data_dir={tmp_path / 'tfds'}", "--stage_steps=1",
                       *TRAIN)
    assert code == 0, err
    assert list((tmp_path / "tfds" / "synthetic_rain").glob("custom_*"))
    assert run_settings(run)["data_dir"] == str(tmp_path / "tfds")
    assert tf.train.latest_checkpoint(f"{run}/checkpoints") == f"{run}/checkpoints/ckpt-1"

    ram_data = f"{_ram_root()}/tfds"
    code, _, err = cli("train", f"--model_dir={_ram_root()}/run", *dataset, f"--data_dir={ram_data}",
                       "--stage_steps=1", *TRAIN)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--data_dir={ram_data}: TFDS cannot use a ram:// folder" in err


# -- flag checks on URLs ----------------------------------------------------------------------------------------


def test_url_flags_are_checked_like_local_folders(cli, ram_run, tmp_path):
    run, data = ram_run
    missing = f"{_ram_root()}/nothing"
    code, _, err = cli("evaluate", f"--model_dir={missing}", f"--dataset=folder:{data}")
    assert code == 2 and f"--model_dir={missing} does not exist: not a training run" in err
    gfile.makedirs(missing)
    code, _, err = cli("evaluate", f"--model_dir={missing}", f"--dataset=folder:{data}")
    assert code == 2 and f"--model_dir={missing} holds no config.json" in err
    code, _, err = cli("train", f"--model_dir={run}/config.json", f"--dataset=folder:{data}", *TRAIN)
    assert code == 2 and f"{run}/config.json is a file, not a folder" in err
    code, _, err = cli("train", "--model_dir=nosuchfs://bucket/run", f"--dataset=folder:{data}", *TRAIN)
    assert code == 2 and "TensorFlow has no file system for nosuchfs://" in err
    code, _, err = cli("derain", f"--model_dir={run}", f"--output_dir={_ram_root()}/out", str(data / "rainy"))
    assert code == 2 and "images are written to a local folder" in err
    assert len(err.strip().splitlines()) == 1


# -- (d) fileio's atomic writers on ram:// ----------------------------------------------------------------------


def test_atomic_writes_on_ram_replace_whole_files_and_leave_no_temporary_file():
    root = _ram_root()
    path = f"{root}/sub/a.json"
    fileio.atomic_write_text(path, "héllo\n", make_parents=True)
    assert gfile.GFile(path, "rb").read() == "héllo\n".encode()
    fileio.atomic_write_bytes(path, b"\x00\x01")
    assert gfile.GFile(path, "rb").read() == b"\x00\x01"
    with fileio.atomic_open(f"{root}/sub/c.txt", "w", encoding="latin-1") as f:
        f.write("é")
    assert gfile.GFile(f"{root}/sub/c.txt", "rb").read() == b"\xe9"
    assert sorted(gfile.listdir(f"{root}/sub")) == ["a.json", "c.txt"]
    assert fileio.read_text(path.replace("a.json", "c.txt"), encoding="latin-1") == "é"


def test_a_failed_write_on_ram_keeps_the_old_file_and_removes_the_temporary_one(monkeypatch):
    root = _ram_root()
    gfile.makedirs(root)
    path = f"{root}/a.txt"
    fileio.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError, match="interrupted"):  # the writer raises
        with fileio.atomic_open(path, "w") as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert gfile.GFile(path).read() == "old" and gfile.listdir(root) == ["a.txt"]

    def refused(src, dst, overwrite=False):  # the rename over the old file fails
        raise tf.errors.PermissionDeniedError(None, None, "no rename here")

    monkeypatch.setattr(tf.io.gfile, "rename", refused)
    with pytest.raises(PermissionError, match="no rename here"):
        fileio.atomic_write_text(path, "new")
    assert gfile.GFile(path).read() == "old" and gfile.listdir(root) == ["a.txt"]


def test_check_writable_folder_on_ram():
    root = _ram_root()
    fileio.check_writable_folder(f"{root}/run/deeper")  # nothing exists yet: fine, and nothing is left
    assert not gfile.exists(root)
    fileio.atomic_write_text(f"{root}/file", "x")
    with pytest.raises(ValueError, match=f"^{root}/file is a file, not a folder$"):
        fileio.check_writable_folder(f"{root}/file")
    with pytest.raises(ValueError, match=f"^{root}/file is a file, so the folder {root}/file/run cannot be created$"):
        fileio.check_writable_folder(f"{root}/file/run")
    assert gfile.listdir(root) == ["file"]  # the probe files are gone


def test_local_paths_keep_the_os_functions(tmp_path, monkeypatch):
    """A local path never reaches tf.io.gfile (the os functions and their exact behaviour: umask,
    fsync, os.replace)."""
    def no_gfile(*args, **kwargs):
        raise AssertionError("tf.io.gfile used for a local path")

    for name in ("exists", "isdir", "listdir", "makedirs", "rename", "GFile", "remove", "rmtree", "copy"):
        monkeypatch.setattr(tf.io.gfile, name, no_gfile)
    fileio.atomic_write_text(tmp_path / "a" / "b.txt", "x", make_parents=True)
    assert fileio.read_text(tmp_path / "a" / "b.txt") == "x" and fileio.isfile(tmp_path / "a" / "b.txt")
    fileio.move(str(tmp_path / "a"), str(tmp_path / "c"))
    assert fileio.listdir(tmp_path / "c") == ["b.txt"] and not fileio.exists(tmp_path / "a")
    fileio.check_writable_folder(tmp_path / "d")
    assert fileio.abspath("x") == str(Path.cwd() / "x")
