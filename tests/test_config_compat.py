"""Run folders written by an earlier release still load: their flat config.json converts, and the
trainer it builds checkpoints exactly the variables their checkpoints hold (tests/data/old_runs)."""

import json
from pathlib import Path

import pytest
import tensorflow as tf

from erl_derain import config as cfglib
from erl_derain import training
from erl_derain.methods import get_method, make_trainer
from erl_derain.run_config import FORMAT, ConfigError, RunRecord, read_record, record_from_dict

OLD_RUNS = Path(__file__).resolve().parent / "data" / "old_runs"
METHODS = sorted(p.name for p in OLD_RUNS.iterdir() if p.is_dir())


def test_every_method_of_that_release_has_an_old_run():
    assert METHODS == ["erlnet", "iadn", "jrgr", "memd", "menet"]


@pytest.mark.parametrize("method", METHODS)
def test_old_config_converts_and_the_trainer_checkpoints_the_same_variables(method, tmp_path):
    old = json.loads((OLD_RUNS / method / "config.json").read_text())
    record = read_record(str(OLD_RUNS / method))
    assert record.method == method and record.run.crop_size == old["crop_size"] == 32
    assert record.run.stage_steps == tuple(int(s) for s in old["stage_steps"])
    trainer = make_trainer(record)
    trainer.build_networks()
    run = training.Run(str(tmp_path), trainer)
    path = run.save()  # as the training loop saves
    ours = {n: list(s) for n, s in tf.train.list_variables(path) if not n.startswith("_CHECKPOINTABLE")}
    theirs = json.loads((OLD_RUNS / method / "checkpoint_variables.json").read_text())
    assert ours == theirs
    # written back in format 2 and read again: the same settings
    again = record_from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record and record.to_dict()["format"] == FORMAT


def test_old_settings_keep_their_meaning():
    """Settings whose default changed after those runs take what the code did then."""
    iadn = read_record(str(OLD_RUNS / "iadn")).method_config
    assert iadn.seg_net == "sub1"  # Phi was sub-network 1 only
    jrgr = read_record(str(OLD_RUNS / "jrgr")).method_config
    assert jrgr.pretrain == "separate" and jrgr.real_dataset == "/tmp/oldruns/real"
    assert (jrgr.fr_lr_factor, jrgr.fs_lr_factor) == (0.1, 0.01)  # recorded explicitly by that release
    erl = read_record(str(OLD_RUNS / "erlnet")).method_config
    assert (erl.schedule, erl.widths, erl.entangle_at) == ("ma_d", (8, 16), "post_activation")
    memd = read_record(str(OLD_RUNS / "memd")).method_config
    assert (memd.schedule, memd.entanglement) == ("memd", "none")


def test_the_bundled_models_configuration_loads():
    from erl_derain.pretrained import load_pretrained_trainer, read_info

    record = record_from_dict(read_info()["config"])
    assert record.method == "erlnet" and record.method_config.widths == (24, 48, 96)
    trainer, info = load_pretrained_trainer()
    assert info["record"] == record and trainer.pad_multiple == 8


def test_unknown_keys_are_errors_naming_them():
    old = json.loads((OLD_RUNS / "erlnet" / "config.json").read_text())
    with pytest.raises(ConfigError, match="'widthz'"):
        record_from_dict({**old, "widthz": [8]})
    new = read_record(str(OLD_RUNS / "erlnet")).to_dict()
    with pytest.raises(ConfigError, match="'growht'"):
        record_from_dict({**new, "method_config": {**new["method_config"], "growht": 3}})
    with pytest.raises(ConfigError, match="format 7"):
        record_from_dict({**new, "format": 7})
    with pytest.raises(ConfigError, match="--erl_growth"):
        record_from_dict({**new, "method_config": {**new["method_config"], "growth": "many"}})


@pytest.mark.parametrize("method", METHODS)
def test_flags_round_trip_through_the_dataclass(method):
    """flags.txt of a run parses back to the same settings (the flags are generated from the fields)."""
    from absl import flags

    from erl_derain import cli  # noqa: F401  (defines the flags)
    from erl_derain.run_config import make_record

    record = read_record(str(OLD_RUNS / method))
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["erl-derain", *record.flag_lines()])
        spec = get_method(method)
        from erl_derain.run_config import RunConfig

        again = make_record(method, cfglib.from_flags(RunConfig, "", flags.FLAGS),
                            cfglib.from_flags(spec.config_class, spec.flag_prefix, flags.FLAGS))
    finally:
        flags.FLAGS.unparse_flags()
    assert isinstance(again, RunRecord) and again == record
