"""Issue 26, item 7 and the command-line fuzz test: every flag is checked right after parsing
(``cli.validate_flags``, called by ``main``), before any model is loaded or built; a bad flag is a
usage error (exit status 2) in one line naming the flag, never a traceback, and never once per image
after the model has loaded.

The model loaders (``training.load_trainer``, ``pretrained.load_pretrained_trainer``) and the
trainer builder (``methods.make_trainer``) are replaced by probes that record a call and refuse it:
a refused command must never reach them."""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import re
import string

import pytest
from absl import flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erl_derain import cli, methods, pretrained, training
from erl_derain.data import image_io

from .conftest import make_folder_dataset

FLAGS = flags.FLAGS
EVAL_TILE = 1024  # evaluate / compare: whole images up to this size unless --tile is given


class ModelLoaded(AssertionError):
    pass


@pytest.fixture
def probes(monkeypatch):
    """Record (and refuse) every model load / trainer build; undo what --max_pixels sets."""
    calls = []

    def probe(name):
        def refuse(*args, **kwargs):
            calls.append(name)
            raise ModelLoaded(f"{name} was called: a model was loaded before the flags were checked")
        return refuse

    monkeypatch.setattr(training, "load_trainer", probe("load_trainer"))
    monkeypatch.setattr(pretrained, "load_pretrained_trainer", probe("load_pretrained_trainer"))
    monkeypatch.setattr(methods, "make_trainer", probe("make_trainer"))
    monkeypatch.setattr(image_io, "MAX_PIXELS", getattr(image_io, "MAX_PIXELS", None), raising=False)
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    return calls


def _parse(argv):
    """What ``erl-derain`` does with its arguments before ``main`` (``cli.run``: absl's parsing, its
    errors as usage errors)."""
    parse = getattr(cli, "_parse_flags", None)
    return parse(argv) if parse is not None else FLAGS(argv)


def run_cli(capsys, *args):
    """``erl-derain <args>`` in this process: (exit status, stdout, stderr). absl's flags are reset
    before and after (as the ``run_cli`` fixture does)."""
    FLAGS.unparse_flags()
    try:
        try:
            code = cli.main(_parse(["erl-derain", *args])) or 0
        except SystemExit as e:
            code = e.code
    finally:
        FLAGS.unparse_flags()
    out = capsys.readouterr()
    return code, out.out, out.err


FLAG_IN_TEXT = re.compile(r"--(?:no)?([a-z][a-z0-9_]*)")


def assert_usage_error(code, err, *named):
    """Exit status 2, one error line (the last line) naming the flags ``named``, no traceback."""
    lines = [line for line in err.split("\n") if line.strip()]  # (not splitlines: a value may hold \x0c, \x1e, ...)
    errors = [line for line in lines if ": error: " in line]
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for flag in named:
        assert f"--{flag}" in errors[0], (flag, errors[0])
    return errors[0]


@pytest.fixture
def places(tmp_path):
    """A fake run folder (config.json: all the validation looks at), a photo, a folder dataset."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    data = make_folder_dataset(tmp_path / "data", n=1, size=(16, 16))
    photo = data / "rainy" / "img0.png"
    return {"run": str(run), "photo": str(photo), "data": f"folder:{data}", "tmp": tmp_path,
            "clean": str(data / "clean")}


# --------------------------------------------------------------------------------------------------
# Item 7: the cases, and their neighbours in every verb
# --------------------------------------------------------------------------------------------------

def _cases():
    """(id, arguments with {run}/{photo}/{data}/{tmp}/{clean} placeholders, flags the message names)."""
    derain = ["derain", "--output_dir={tmp}/out"]
    evaluate = ["evaluate", "--model_dir={run}", "--dataset={data}", "--output={tmp}/eval"]
    compare = ["compare", "--baseline={run}", "--candidate={run}", "--dataset={data}", "--output={tmp}/cmp"]
    train = ["train", "--model_dir={tmp}/new_run", "--dataset={data}", "--crop_size=16", "--stage_steps=1,1,1"]
    export = ["export", "--model_dir={run}", "--export_base={tmp}/models/m"]
    synth = ["synthesize", "--clean_dir={clean}", "--output_dir={tmp}/synth"]
    return [
        # the issue's own cases
        ("derain-tile-negative", [*derain, "--tile=-5", "{photo}"], ["tile"]),
        ("derain-tile-17-default-overlap", [*derain, "--tile=17", "{photo}", "{photo}"], ["tile", "tile_overlap"]),
        ("derain-overlap-negative", [*derain, "--tile_overlap=-3", "{photo}"], ["tile_overlap"]),
        ("derain-self-ensemble-3", [*derain, "--self_ensemble=3", "{photo}"], ["self_ensemble"]),
        ("derain-tile-batch-0", [*derain, "--tile_batch=0", "{photo}"], ["tile_batch"]),
        ("derain-run-tile-batch-negative", [*derain, "--model_dir={run}", "--tile_batch=-2", "{photo}"], ["tile_batch"]),
        ("derain-server-tile-batch", [*derain, "--server=127.0.0.1:1", "--model_name=m", "--tile_batch=4", "{photo}"],
         ["tile_batch"]),
        # the same with a run folder, and the other checks of derain
        ("derain-run-overlap-equals-tile", [*derain, "--model_dir={run}", "--tile=64", "--tile_overlap=64", "{photo}"],
         ["tile_overlap"]),
        ("derain-run-self-ensemble-0", [*derain, "--model_dir={run}", "--self_ensemble=0", "{photo}"],
         ["self_ensemble"]),
        ("derain-max-pixels-0", [*derain, "--max_pixels=0", "{photo}"], ["max_pixels"]),
        ("derain-no-run", [*derain, "--model_dir={tmp}/missing", "{photo}"], ["model_dir"]),
        ("derain-run-without-config", [*derain, "--model_dir={tmp}", "{photo}"], ["model_dir"]),
        ("derain-tile-not-a-number", [*derain, "--tile=big", "{photo}"], ["tile"]),
        ("derain-bad-format", [*derain, "--output_format=gif", "{photo}"], ["output_format"]),
        ("derain-server-self-ensemble", [*derain, "--server=127.0.0.1:1", "--model_name=m", "--self_ensemble=2",
                                         "{photo}"], ["self_ensemble"]),
        ("derain-server-no-model-name", [*derain, "--server=127.0.0.1:1", "{photo}"], ["model_name"]),
        ("derain-server-version-negative", [*derain, "--server=127.0.0.1:1", "--model_name=m", "--version=-1",
                                            "{photo}"], ["version"]),
        # evaluate: its whole-image default (1024) and an explicit --tile
        ("evaluate-tile-17", [*evaluate, "--tile=17"], ["tile", "tile_overlap"]),
        ("evaluate-tile-negative", [*evaluate, "--tile=-5"], ["tile"]),
        ("evaluate-overlap-negative", [*evaluate, "--tile_overlap=-3"], ["tile_overlap"]),
        ("evaluate-overlap-beyond-default-tile", [*evaluate, "--tile_overlap=2000"], ["tile_overlap"]),
        ("evaluate-self-ensemble-3", [*evaluate, "--self_ensemble=3"], ["self_ensemble"]),
        ("evaluate-tile-batch-0", [*evaluate, "--tile_batch=0"], ["tile_batch"]),
        ("evaluate-bundled-self-ensemble-3", ["evaluate", "--dataset={data}", "--self_ensemble=3"], ["self_ensemble"]),
        ("evaluate-max-images-0", [*evaluate, "--max_images=0"], ["max_images"]),
        ("evaluate-crop-border-negative", [*evaluate, "--crop_border=-1"], ["crop_border"]),
        ("evaluate-eval-crop-size-0", [*evaluate, "--eval_crop_size=0"], ["eval_crop_size"]),
        ("evaluate-no-run", ["evaluate", "--model_dir={tmp}/missing", "--dataset={data}"], ["model_dir"]),
        ("evaluate-second-run-missing", ["evaluate", "--model_dir={run},{tmp}/missing", "--dataset={data}"],
         ["model_dir"]),
        ("evaluate-no-network", [*evaluate, "--network="], ["network"]),
        ("evaluate-output-is-a-file", [*evaluate, "--output={photo}"], ["output"]),
        ("evaluate-bad-protocol", [*evaluate, "--eval_protocol=five_crop"], ["eval_protocol"]),
        ("evaluate-max-pixels-negative", [*evaluate, "--max_pixels=-1"], ["max_pixels"]),
        ("evaluate-unknown-dataset-in-a-list", [*evaluate, "--dataset={data},rain100h,no_such_set"], ["dataset"]),
        ("evaluate-dataset-folder-missing", [*evaluate, "--dataset=folder:{tmp}/missing"], ["dataset"]),
        # compare
        ("compare-self-ensemble-3", [*compare, "--self_ensemble=3"], ["self_ensemble"]),
        ("compare-tile-17", [*compare, "--tile=17"], ["tile_overlap"]),
        ("compare-figures-negative", [*compare, "--figures=-1"], ["figures"]),
        ("compare-ten-crop", [*compare, "--eval_protocol=ten_crop_rgb"], ["eval_protocol"]),
        ("compare-no-baseline", ["compare", "--candidate={run}"], ["baseline"]),
        ("compare-candidate-missing", ["compare", "--baseline={run}", "--candidate={tmp}/missing"], ["candidate"]),
        # train: nothing is built
        ("train-batch-size-0", [*train, "--batch_size=0"], ["batch_size"]),
        ("train-crop-size-negative", [*train, "--crop_size=-16"], ["crop_size"]),
        ("train-lr-0", [*train, "--lr=0"], ["lr"]),
        ("train-lr-nan", [*train, "--lr=nan"], ["lr"]),
        ("train-min-lr-negative", [*train, "--min_lr=-1"], ["min_lr"]),
        ("train-rain-free-fraction-above-1", [*train, "--rain_free_fraction=1.5"], ["rain_free_fraction"]),
        ("train-stage-steps-negative", [*train, "--stage_steps=-1,1,1"], ["stage_steps"]),
        ("train-checkpoint-every-0", [*train, "--checkpoint_every=0"], ["checkpoint_every"]),
        ("train-keep-checkpoints-0", [*train, "--keep_checkpoints=0"], ["keep_checkpoints"]),
        ("train-shuffle-buffer-0", [*train, "--shuffle_buffer=0"], ["shuffle_buffer"]),
        ("train-max-pixels-0", [*train, "--max_pixels=0"], ["max_pixels"]),
        ("train-no-model-dir", ["train", "--dataset={data}"], ["model_dir"]),
        ("train-model-dir-is-a-file", ["train", "--model_dir={photo}", "--dataset={data}"], ["model_dir"]),
        ("train-unknown-method", [*train, "--method=nope"], ["method"]),
        ("train-bad-widths", [*train, "--erl_widths=8,x"], ["erl_widths"]),
        ("train-bad-schedule", [*train, "--erl_schedule=ma_z"], ["erl_schedule"]),
        ("train-unknown-dataset", [*train, "--dataset=no_such_set"], ["dataset"]),
        ("train-dataset-folder-missing", [*train, "--dataset=folder:{tmp}/missing"], ["dataset"]),
        ("train-dataset-empty", [*train, "--dataset="], ["dataset"]),
        ("train-clean-dir-missing", [*train, "--dataset=synthetic_rain", "--clean_dir={tmp}/missing"], ["clean_dir"]),
        ("train-seed-negative", [*train, "--seed=-1"], ["seed"]),
        ("train-seed-beyond-32-bits", [*train, f"--seed={2**32}"], ["seed"]),
        ("train-batch-size-beyond-64-bits", [*train, f"--batch_size={2**70}"], ["batch_size"]),
        ("train-lambda-inf", [*train, "--erl_lambda_fre=inf"], ["erl_lambda_fre"]),
        # export
        ("export-pretrained-and-run", [*export, "--pretrained"], ["pretrained", "model_dir"]),
        ("export-nothing-to-export", ["export", "--export_base={tmp}/models/m"], ["model_dir"]),
        ("export-no-base", ["export", "--model_dir={run}"], ["export_base"]),
        ("export-version-negative", [*export, "--version=-1"], ["version"]),
        ("export-max-pixels-0", [*export, "--max_pixels=0"], ["max_pixels"]),
        ("export-root-outside", [*export, "--serving_root={tmp}/elsewhere"], ["serving_root"]),
        ("export-base-under-a-file", ["export", "--model_dir={run}", "--export_base={photo}/m"], ["export_base"]),
        # synthesize, prepare
        ("synthesize-renders-0", [*synth, "--renders_per_image=0"], ["renders_per_image"]),
        ("synthesize-density-2", [*synth, "--rain_density=2"], ["rain_density"]),
        ("synthesize-length-negative", [*synth, "--rain_length=-1"], ["rain_length"]),
        ("synthesize-layers-0", [*synth, "--rain_layers=0"], ["rain_layers"]),
        ("synthesize-length-inf", [*synth, "--rain_length=inf"], ["rain_length"]),
        ("synthesize-output-dir-nul", ["synthesize", "--clean_dir={clean}", "--output_dir={tmp}/\x00"], ["output_dir"]),
        ("derain-model-dir-nul", [*derain, "--model_dir={tmp}/\x00", "{photo}"], ["model_dir"]),
        ("synthesize-no-clean-dir", ["synthesize", "--clean_dir={tmp}/missing", "--output_dir={tmp}/s"], ["clean_dir"]),
        ("synthesize-over-clean-dir", ["synthesize", "--clean_dir={clean}", "--output_dir={tmp}/data"],
         ["output_dir"]),
        ("prepare-max-pixels-0", ["prepare", "--dataset=rain100h", "--max_pixels=0"], ["max_pixels"]),
        ("prepare-unknown-dataset", ["prepare", "--dataset=no_such_set"], ["dataset"]),
        ("compare-unknown-dataset", [*compare, "--dataset=no_such_set"], ["dataset"]),
    ]


CASES = _cases()


@pytest.mark.parametrize("args, named", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_flag_is_a_usage_error_before_any_model(probes, places, capsys, monkeypatch, args, named):
    monkeypatch.chdir(places["tmp"])
    args = [a.format(**places) for a in args]
    code, _, err = run_cli(capsys, *args)
    assert_usage_error(code, err, *named)
    assert probes == []  # no model was loaded or built
    assert not (places["tmp"] / "out").exists() and not (places["tmp"] / "new_run").exists()


def test_the_probes_see_a_load(probes, places, capsys, monkeypatch):
    """The control: with valid flags, derain and evaluate do reach the (probed) model loaders, and
    train the trainer builder, so the tests above would see a load."""
    monkeypatch.chdir(places["tmp"])
    for args, name in ((["derain", "--output_dir=out", places["photo"]], "load_pretrained_trainer"),
                       (["derain", f"--model_dir={places['run']}", "--output_dir=out", places["photo"]],
                        "load_trainer"),
                       (["evaluate", f"--model_dir={places['run']}", f"--dataset={places['data']}"], "load_trainer"),
                       (["train", "--model_dir=new_run", f"--dataset={places['data']}", "--crop_size=16"],
                        "make_trainer")):
        with pytest.raises(ModelLoaded):
            run_cli(capsys, *args)
        assert probes[-1] == name


def test_validate_flags_is_the_check(places, monkeypatch):
    """``validate_flags(verb)`` itself raises UsageError on the parsed flags (what main calls first)."""
    monkeypatch.chdir(places["tmp"])
    FLAGS.unparse_flags()
    try:
        FLAGS(["erl-derain", "derain", "--tile=17"])
        with pytest.raises(cli.UsageError, match="--tile_overlap=32 must be smaller than --tile=17"):
            cli.validate_flags("derain")
        FLAGS.unparse_flags()
        FLAGS(["erl-derain", "derain", "--tile=0", "--tile_overlap=500"])  # whole images: the overlap is unused
        cli.validate_flags("derain")
    finally:
        FLAGS.unparse_flags()


# --------------------------------------------------------------------------------------------------
# The fuzz test: random flags of each verb, valid and invalid, through parsing and validation only
# --------------------------------------------------------------------------------------------------

VERBS = [v for v in ("train", "evaluate", "compare", "derain", "export", "prepare", "synthesize", "generate")
         if v in cli.verbs()]
# Examples per verb: about 550 in all (under 15 s); ERL_DERAIN_FUZZ_SCALE=<n> runs n times as many, at random.
SCALE = int(os.environ.get("ERL_DERAIN_FUZZ_SCALE", "1"))
EXAMPLES = {"train": 200}  # the others: 50 each
COMMANDS = ("cmd_train", "cmd_evaluate", "cmd_compare", "cmd_derain", "cmd_export", "cmd_prepare", "cmd_synthesize")

PATH_FLAGS = {"model_dir", "baseline", "candidate", "init_from", "output", "output_dir", "export_base", "serving_root",
              "clean_dir", "data_dir", "manual_dir", "input_dir", "jrgr_real_manual_dir"}
DATASET_FLAGS = {"dataset", "jrgr_real_dataset"}

INTS = st.one_of(st.integers(-3, 4),
                 st.sampled_from([8, 16, 17, 31, 32, 33, 64, 512, 1024, 2**31, 2**63, -2**63, 10**30]),
                 st.integers(-10**6, 10**6))
NOT_INTS = st.sampled_from(["", "abc", "1.5", "1e3", "0x10", "-", "--", " ", "nan", "٣", "1_000", "+3"])
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["0", "-0", "1e-8", "0.5", "1", "2", "1e999", "-1e999"]))
NOT_FLOATS = st.sampled_from(["", "abc", "1,5", "--", "0x", "1e"])
WORDS = st.one_of(st.sampled_from(["", "train", "test", "x", " ", "ü", "a,b", "--", "-1", "none", "\x00", "a" * 300]),
                  st.text(string.ascii_letters + string.digits + "_-.,/:", max_size=8), st.text(max_size=4))


def _paths(places):
    return st.one_of(
        st.sampled_from([places["run"], places["empty"], places["missing"], places["file"], places["under_file"],
                         places["data_dir"], "", "relative_out", places["run"] + "," + places["missing"],
                         places["run"] + "," + places["run"], "/", places["tmp"] + "/\x00x"]),
        st.text(st.characters(exclude_characters="\n\r", exclude_categories=["Cs"]), max_size=6))


def _values(name, places):
    """A strategy of command-line words setting flag ``name``: valid and invalid values."""
    flag = FLAGS[name]
    kind = flag.flag_type()
    spell = lambda v: f"--{name}={v}"  # noqa: E731
    if kind == "bool":
        return st.sampled_from([f"--{name}", f"--no{name}", spell("true"), spell("false"), spell("1"), spell("0"),
                                spell("maybe"), spell("")])
    if kind == "int":
        return st.one_of(INTS.map(str), NOT_INTS).map(spell)
    if kind == "float":
        return st.one_of(FLOATS, NOT_FLOATS).map(spell)
    if "enum" in kind:
        return st.one_of(st.sampled_from(list(flag.parser.enum_values)),
                         st.sampled_from(["", "nope", flag.parser.enum_values[0].upper(), " "])).map(spell)
    if "list" in kind:
        token = st.one_of(st.integers(-2, 300).map(str), st.sampled_from(["", "a", "1.5", "-1", "0", "1e3", "p", "e",
                                                                           "t", "ma_d", " "]))
        return st.lists(token, max_size=4).map(",".join).map(spell)
    if name in PATH_FLAGS:
        return _paths(places).map(spell)
    if name in DATASET_FLAGS:
        return st.sampled_from(["synthetic_rain", "rain100h", places["data"], "folder:/nonexistent", "", "no_such_set",
                                "folder:", places["data"][len("folder:"):], "rain100h,ddn",
                                f"synthetic_rain,{places['data']}"]).map(spell)
    if name == "method":
        return st.sampled_from([*methods.discover(), "", "nope", "ERLNET", "erlnet "]).map(spell)
    if name == "server":
        return st.sampled_from(["127.0.0.1:1", "", "localhost", "http://h:8501", ":::", "h:port"]).map(spell)
    return WORDS.map(spell)


def _base(verb, places):
    """The flags that make ``verb`` valid (drawn with most examples, so that acceptance happens)."""
    return {
        "train": [f"--model_dir={places['new_run']}", f"--dataset={places['data']}"],
        "evaluate": [f"--model_dir={places['run']}"],
        "compare": [f"--baseline={places['run']}", f"--candidate={places['run']}"],
        "derain": [],
        "export": [f"--model_dir={places['run']}", f"--export_base={places['tmp']}/models/m"],
        "prepare": ["--dataset=rain100h"],
        "synthesize": [f"--clean_dir={places['clean']}", f"--output_dir={places['tmp']}/synth"],
        "generate": [f"--model_dir={places['run']}"],
    }.get(verb, [])


@pytest.fixture
def fuzz_places(places):
    tmp = places["tmp"]
    (tmp / "empty").mkdir()
    (tmp / "a_file.txt").write_text("not a folder")
    return {**places, "empty": str(tmp / "empty"), "missing": str(tmp / "missing" / "deeper"),
            "file": str(tmp / "a_file.txt"), "under_file": str(tmp / "a_file.txt" / "sub"),
            "data_dir": places["data"][len("folder:"):], "new_run": str(tmp / "new_run"), "tmp": str(tmp)}


def _expected_bounds(verb, names):
    """What an accepted command guarantees (the documented ranges), checked on the parsed flags."""
    problems = []
    low = {"tile": 0, "tile_overlap": 0, "max_pixels": 1, "crop_border": 0, "max_images": 1, "eval_crop_size": 1,
           "figures": 0, "version": 0, "renders_per_image": 1, "rain_layers": 1, "checkpoint_every": 1, "log_every": 1,
           "keep_checkpoints": 1, "stop_after": 0, "shuffle_buffer": 1, "batch_size": 1, "crop_size": 1}
    for name, bound in low.items():
        value = getattr(FLAGS, name) if name in names else None
        if value is not None and value < bound:
            problems.append(f"--{name}={value} accepted (must be >= {bound})")
    if "seed" in names and not 0 <= FLAGS.seed < 2**32:
        problems.append(f"--seed={FLAGS.seed} accepted")
    for name in names:
        value = getattr(FLAGS, name)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"--{name}={value} accepted")
        if isinstance(value, int) and not isinstance(value, bool) and not -2**63 < value < 2**63:
            problems.append(f"--{name}={value} accepted")
        if isinstance(value, str) and "\x00" in value:
            problems.append(f"--{name}={value!r} accepted")
    if "self_ensemble" in names and FLAGS.self_ensemble not in (1, 2, 4):
        problems.append(f"--self_ensemble={FLAGS.self_ensemble} accepted")
    if {"tile", "tile_overlap"} <= names:
        tile = FLAGS.tile if verb == "derain" or FLAGS["tile"].present else EVAL_TILE
        if tile > 0 and FLAGS.tile_overlap >= tile:
            problems.append(f"--tile_overlap={FLAGS.tile_overlap} >= tile {tile} accepted")
    if verb == "train":
        if FLAGS.lr is not None and not FLAGS.lr > 0:
            problems.append(f"--lr={FLAGS.lr} accepted")
        for name in ("stage_steps", "stage_epochs"):
            if any(not float(v) >= 0 for v in getattr(FLAGS, name) or ()):
                problems.append(f"--{name}={getattr(FLAGS, name)} accepted")
    if verb == "derain" and FLAGS.server and (not FLAGS.model_name or FLAGS.self_ensemble != 1):
        problems.append("--server without --model_name or with --self_ensemble accepted")
    if verb == "export" and (FLAGS.pretrained is not None) == bool(FLAGS.model_dir):
        problems.append("export of both or neither of --pretrained / --model_dir accepted")
    if verb == "synthesize":
        density = FLAGS.rain_density
        if density is not None and not (0 < density <= 1):
            problems.append(f"--rain_density={density} accepted")
    if verb in ("train", "evaluate", "compare") and (verb == "train" or FLAGS["dataset"].present):
        for one in (FLAGS.dataset or "").split(","):
            if one.strip().startswith("folder:") and not os.path.isdir(one.strip()[len("folder:"):]):
                problems.append(f"--dataset={one} (no such folder) accepted")
    for name in ("model_dir", "baseline", "candidate"):
        value = getattr(FLAGS, name) if name in names and verb in ("evaluate", "compare", "export") else None
        for one in (value or "").split(","):
            if one and not (verb == "export" and FLAGS.pretrained):
                if not os.path.isfile(os.path.join(one, "config.json")):
                    problems.append(f"--{name}={one} (no run there) accepted")
    return problems


def _flags_by_method(names):
    """train: for each method, the shared flags and that method's own (the others' are not read)."""
    from erl_derain import config as cfglib

    own = {name: set(cfglib.flag_names(spec.config_class, spec.flag_prefix).values())
           for name, spec in methods.discover().items()}
    every = set().union(*own.values())
    return {m: [n for n in names if n not in every or n in mine] for m, mine in own.items()}


@pytest.mark.parametrize("verb", VERBS)
def test_fuzz_the_flags_of_each_verb(verb, probes, fuzz_places, capsys, monkeypatch):
    """Random subsets of ``verb``'s flags with valid and invalid values, through absl's parsing and
    ``main`` up to the verb itself (each verb's command replaced by a no-op that records it): either
    accepted (and then within the documented ranges) or exit status 2 with one line naming a flag;
    never another exception or a traceback."""
    monkeypatch.chdir(fuzz_places["tmp"])
    accepted = []
    for name in COMMANDS:
        monkeypatch.setattr(cli, name, lambda *args, _name=name: accepted.append(_name) or 0)
    own = cli._method_verbs()
    patched = {k: (spec, dataclasses.replace(v, run=lambda flags_, _name=v.name: accepted.append(_name) or 0))
               for k, (spec, v) in own.items()}
    monkeypatch.setattr(cli, "_method_verbs", lambda: patched)
    names = cli.verb_flags(verb)
    assert names and all(n in FLAGS for n in names)
    outcomes = collections.Counter()
    by_method = _flags_by_method(names) if verb == "train" else {None: names}

    @settings(max_examples=EXAMPLES.get(verb, 50) * SCALE, deadline=None, derandomize=SCALE == 1, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        method = data.draw(st.sampled_from(sorted(by_method, key=str)), label="method")
        chosen = data.draw(st.lists(st.sampled_from(by_method[method]), unique=True, max_size=6), label="flags")
        args = ([f"--method={method}"] if method else []) + [data.draw(_values(n, fuzz_places), label=n)
                                                              for n in chosen]
        if data.draw(st.booleans(), label="with the flags that make it valid"):
            args = _base(verb, fuzz_places) + args
        del accepted[:]
        FLAGS.unparse_flags()
        try:
            try:
                code = cli.main(_parse(["erl-derain", verb, *args]))
            except SystemExit as e:
                code = e.code
            if code == 0:
                assert accepted, args
                problems = _expected_bounds(verb, set(names))
                assert not problems, (args, problems)
        finally:
            FLAGS.unparse_flags()
        err = capsys.readouterr().err
        if code == 0:
            outcomes["accepted"] += 1
            return
        line = assert_usage_error(code, err)
        assert not accepted
        named = [n for n in FLAG_IN_TEXT.findall(line) if n in FLAGS]
        assert named, line
        outcomes["refused"] += 1

    check()
    assert probes == []
    assert outcomes["accepted"] >= 1 and outcomes["refused"] >= 1, outcomes


# --------------------------------------------------------------------------------------------------
# absl's own errors (parsing, flagfiles): usage errors in one line as well
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, named", [
    (["--tile=big"], ["tile"]), (["--tile"], ["tile"]), (["--overwrite=2"], ["overwrite"]),
    (["--output_format=gif"], ["output_format"]), (["--no_such_flag=1"], ["no_such_flag"]),
    (["--tiel=3"], ["tiel"]), (["--flagfile={tmp}/missing.flags"], ["flagfile"]),
    (["--flagfile={tmp}"], ["flagfile"]), (["--flagfile={tmp}/binary.flags"], ["flagfile"]),
    (["--flagfile={tmp}/bad_value.flags"], ["tile"]), (["--flagfile={tmp}/includes_binary.flags"], ["flagfile"])],
    ids=["not-an-int", "no-value", "not-a-bool", "bad-enum", "unknown-flag", "misspelt-flag", "missing-flagfile",
         "flagfile-is-a-folder",
         "binary-flagfile", "flagfile-with-a-bad-value", "flagfile-including-a-binary-one"])
def test_parse_errors_are_usage_errors(probes, places, capsys, monkeypatch, args, named):
    tmp = places["tmp"]
    monkeypatch.chdir(tmp)
    (tmp / "binary.flags").write_bytes(b"\xff\xfe\x00--tile=3\n\xc3")
    (tmp / "bad_value.flags").write_text("# a flagfile\n--tile=-5\n")
    (tmp / "includes_binary.flags").write_text(f"--flagfile={tmp / 'binary.flags'}\n")
    code, _, err = run_cli(capsys, "derain", *[a.format(**places) for a in args], places["photo"])
    assert_usage_error(code, err, *named)
    assert probes == []


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(content=st.one_of(
    st.binary(max_size=48),
    st.lists(st.sampled_from(["--tile=-5", "--tile=0", "--tile=64", "--tile_overlap=8", "--tile_overlap=99",
                              "--self_ensemble=2", "--self_ensemble=3", "--max_pixels=0", "--max_pixels=5",
                              "--output_format=jpg", "--nooverwrite", "--tile", "# comment", "", "   --tile=9",
                              "--flagfile=nowhere.flags", "--unknown=1", "tile=5", "\t"]), max_size=6)
    .map(lambda lines: "\n".join(lines).encode())))
def test_fuzz_flagfiles(tmp_path_factory, capsys, content):
    """A flagfile of random bytes, or of random lines of derain flags: accepted or one usage error."""
    tmp = tmp_path_factory.mktemp("flagfile")
    path = tmp / "random.flags"
    path.write_bytes(content)
    mp = pytest.MonkeyPatch()
    accepted = []
    try:
        mp.chdir(tmp)
        mp.setattr(cli, "cmd_derain", lambda args: accepted.append(args) or 0)
        mp.setattr(image_io, "MAX_PIXELS", getattr(image_io, "MAX_PIXELS", None), raising=False)
        code, _, err = run_cli(capsys, "derain", f"--flagfile={path}")
    finally:
        mp.undo()
    if code == 0:
        assert accepted
        return
    line = assert_usage_error(code, err)
    assert FLAG_IN_TEXT.search(line), line
    assert not accepted


def test_the_entry_point_exits_2_in_one_line(places):
    """The real ``erl-derain`` process (absl's app.run with our parser): a bad value and a binary flagfile."""
    import subprocess
    import sys

    tmp = places["tmp"]
    (tmp / "binary.flags").write_bytes(b"\xff\xfe\x00\xc3")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for args, flag in ((["--tile=-5", places["photo"]], "--tile"),
                       ([f"--flagfile={tmp / 'binary.flags'}", places["photo"]], "--flagfile")):
        proc = subprocess.run([sys.executable, "-m", "erl_derain.cli", "derain", f"--output_dir={tmp / 'out'}", *args],
                              capture_output=True, text=True, env=env, timeout=300, cwd=tmp)
        errors = [line for line in proc.stderr.split("\n") if ": error: " in line]
        assert proc.returncode == 2, proc.stderr
        assert len(errors) == 1 and flag in errors[0] and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp / "out").exists()
