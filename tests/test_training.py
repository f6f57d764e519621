"""The shared training loop: plateau rule, checkpoints, resume (in-process and after kill -9)."""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from erl_derain import training
from erl_derain.data import pipelines
from erl_derain.methods import make_trainer

from .conftest import TINY_FLAGS, make_folder_dataset

TINY = {"widths": [8, 16], "bottleneck_width": 16, "dense_layers": 2, "growth": 8, "se_ratio": 2}


class _FakeOptimizer:
    def __init__(self, lr):
        self.learning_rate = tf.Variable(lr)


def test_plateau_rule_hand_worked():
    rule = training.PlateauSchedule(window=2, patience=2, factor=0.1, min_lr=1e-6, min_delta=0.0)
    opt = _FakeOptimizer(1e-3)
    losses = [4, 2,   # window mean 3: best
              2, 2,   # 2 < 3: best
              3, 1,   # 2: no improvement (wait 1)
              2, 2,   # 2: wait 2 -> lr 1e-4
              5, 5]   # 5: wait 1
    changes = [(i, rule.update(v, opt)) for i, v in enumerate(losses)]
    reduced = [(i, lr) for i, lr in changes if lr is not None]
    assert [i for i, _ in reduced] == [7]
    np.testing.assert_allclose(reduced[0][1], 1e-4, rtol=1e-6)
    np.testing.assert_allclose(float(opt.learning_rate), 1e-4, rtol=1e-6)
    assert int(rule.wait) == 1


class _Stop(Exception):
    pass


def _run(model_dir, data, stop_at=None, steps=(2, 3, 2), init_seed=0):
    config = {"method": "erlnet", "erl_strategy": "ma_d", **TINY}
    keras.utils.set_random_seed(init_seed)
    trainer = make_trainer(config)

    def dataset_fn(start):
        return pipelines.paired_dataset(f"folder:{data}", "train", batch_size=2, crop_size=16, seed=3,
                                        start_index=start, flip=True)

    calls = []

    def on_step_end(stage, step, logs):
        calls.append((stage, step))
        if stop_at is not None and (stage, step) == stop_at:
            raise _Stop()

    summary = training.train(trainer, config, dataset_fn, model_dir=str(model_dir), stage_steps=list(steps),
                             batch_size=2, jit_compile="false", checkpoint_every=1, verbose=0,
                             plateau=training.PlateauSchedule(window=0), on_step_end=on_step_end)
    return trainer, summary, calls


def test_resume_in_process_matches_uninterrupted_run(tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=5, size=(24, 32))
    ref, _, ref_calls = _run(tmp_path / "ref", data)
    assert ref_calls == [(0, 1), (0, 2), (1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    with pytest.raises(_Stop):
        _run(tmp_path / "run", data, stop_at=(1, 2))  # stopped after the checkpoint of stage II step 2
    # Another initialisation seed: every weight and optimizer slot must come from the checkpoint.
    resumed, summary, calls = _run(tmp_path / "run", data, init_seed=99)
    assert calls == [(1, 3), (2, 1), (2, 2)]  # resumes at the saved stage and step, not from scratch
    assert summary["global_step"] == 7
    for a, b in zip(ref.net.weights + ref.clean_ae.weights, resumed.net.weights + resumed.clean_ae.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    # Running the finished command again does no work.
    _, again, calls = _run(tmp_path / "run", data)
    assert calls == [] and again["global_step"] == 7


def test_model_dir_of_another_method_is_rejected(tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    _run(tmp_path / "run", data, steps=(1, 1, 1))
    trainer = make_trainer({"method": "memd", **TINY})
    with pytest.raises(training.TrainingError, match="holds a run of method 'erlnet'"):
        training.train(trainer, {"method": "memd", **TINY}, lambda s: None, model_dir=str(tmp_path / "run"),
                       stage_steps=[1], batch_size=1, verbose=0)


def test_init_from_starts_a_new_run_from_another_runs_weights(tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=3, size=(24, 24))
    source, _, _ = _run(tmp_path / "source", data, steps=(2, 1, 1))

    def fine_tune(model_dir, init_from, steps=(0, 0, 0), sizes=TINY):
        keras.utils.set_random_seed(7)  # another initialisation than the source's
        cfg = {"method": "erlnet", "erl_strategy": "ma_d", **TINY, **sizes}
        trainer = make_trainer(cfg)
        summary = training.train(
            trainer, cfg, lambda start: pipelines.paired_dataset(f"folder:{data}", "train", batch_size=2,
                                                                 crop_size=16, seed=3, start_index=start),
            model_dir=str(model_dir), stage_steps=list(steps), batch_size=2, jit_compile="false", verbose=0,
            plateau=training.PlateauSchedule(window=0), init_from=str(init_from))
        return trainer, summary

    # No step trained: every network weight is the one the source run ended with.
    tuned, summary = fine_tune(tmp_path / "tuned", tmp_path / "source")
    assert summary["initialised_from"].endswith("ckpt-4") and summary["global_step"] == 0
    pairs = list(zip(source.net.weights + source.clean_ae.weights, tuned.net.weights + tuned.clean_ae.weights))
    keras.utils.set_random_seed(7)
    fresh = make_trainer({"method": "erlnet", "erl_strategy": "ma_d", **TINY})
    fresh.build_networks()  # what the new run would have started from without --init_from
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(source.net.weights, fresh.net.weights))
    for a, b in pairs:
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # A stage given 0 steps is passed over: only stage III trains, and it changes the weights.
    tuned3, summary = fine_tune(tmp_path / "tuned3", tmp_path / "source", steps=(0, 0, 2))
    assert {k: v["steps"] for k, v in summary["stages"].items()} == {"I": 0, "II": 0, "III": 2}
    assert summary["global_step"] == 2
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(source.net.weights, tuned3.net.weights))
    # Bad sources are named.
    with pytest.raises(training.TrainingError, match=r"--init_from=.*nowhere.*no checkpoint"):
        fine_tune(tmp_path / "t2", tmp_path / "nowhere")
    with pytest.raises(training.TrainingError, match=r"--init_from=.*does not match.*this run's settings"):
        fine_tune(tmp_path / "t3", tmp_path / "source", sizes={"widths": [8, 24]})


def test_wrong_number_of_stage_steps(tmp_path):
    trainer = make_trainer({"method": "erlnet", "erl_strategy": "ma_d", **TINY})
    with pytest.raises(training.TrainingError, match="3 stage"):
        training.train(trainer, {"method": "erlnet"}, lambda s: None, model_dir=str(tmp_path / "m"),
                       stage_steps=[1, 2], batch_size=1, verbose=0)


def test_killed_training_resumes_at_saved_step(tmp_path):
    """kill -9 a real `erl-derain train` process mid-stage, re-run the same command."""
    data = make_folder_dataset(tmp_path / "data", n=4, size=(24, 32))
    model_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "erl_derain.cli", "train", f"--model_dir={model_dir}", f"--dataset=folder:{data}",
           "--crop_size=16", "--batch_size=1", "--stage_steps=4,400,4", "--checkpoint_every=3",
           "--noevaluate_after", "--jit_compile=false", *TINY_FLAGS]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    ckpt_dir = model_dir / "checkpoints"
    deadline = time.time() + 240
    saved = None
    # Wait until stage II has written a mid-stage checkpoint (global step > 4 + 3), then kill -9.
    while time.time() < deadline and proc.poll() is None:
        state = tf.train.get_checkpoint_state(str(ckpt_dir)) if ckpt_dir.exists() else None
        if state and int(state.model_checkpoint_path.rsplit("-", 1)[1]) >= 10:
            saved = int(state.model_checkpoint_path.rsplit("-", 1)[1])
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert saved is not None, proc.stdout.read().decode()[-3000:]
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    step_in_stage = int(latest.rsplit("-", 1)[1]) - 4
    assert 0 < step_in_stage < 400
    # Re-run the same command, with fewer stage-II steps so the test ends soon.
    cmd2 = [c if not c.startswith("--stage_steps") else f"--stage_steps=4,{step_in_stage + 2},1" for c in cmd]
    out = subprocess.run(cmd2, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Resuming {model_dir} at stage II (#2/3), step {step_in_stage}" in out.stdout
    assert f"steps {step_in_stage}->{step_in_stage + 2}" in out.stdout
    final = tf.train.latest_checkpoint(str(ckpt_dir))
    assert int(final.rsplit("-", 1)[1]) == 4 + step_in_stage + 2 + 1


def test_step_schedule_hand_worked_and_applied_by_the_loop(tmp_path):
    rule = training.StepSchedule(1e-3, [2, 4], factor=0.1)
    # steps 1-2 at 1e-3, 3-4 at 1e-4 (the first step after a boundary is decayed), 5 on at 1e-5
    np.testing.assert_allclose([rule(s) for s in range(1, 7)], [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-12)
    data = make_folder_dataset(tmp_path / "data", n=2, size=(16, 16))
    trainer = make_trainer({"method": "memd", **TINY})
    seen = []

    def dataset_fn(start):
        return pipelines.paired_dataset(f"folder:{data}", "train", batch_size=1, crop_size=16, start_index=start)

    training.train(trainer, {"method": "memd", **TINY}, dataset_fn, model_dir=str(tmp_path / "run"),
                   stage_steps=[5], batch_size=1, jit_compile=False, verbose=0, lr_schedule=rule,
                   on_step_end=lambda stage, step, logs: seen.append(float(trainer.current_optimizer.learning_rate)))
    np.testing.assert_allclose(seen, [rule(s) for s in range(1, 6)], rtol=1e-6)


@pytest.mark.parametrize("on_nan", ["stop", "skip_batch"])
def test_non_finite_loss_stops_or_skips_the_batch(tmp_path, on_nan):
    data = make_folder_dataset(tmp_path / "data", n=2, size=(16, 16))
    config = {"method": "memd", **TINY}
    trainer = make_trainer(config)
    poison = tf.Variable(0.0, trainable=False)
    original = trainer.train_step

    def poisoned_step(batch):  # the real step, whose loss turns NaN while `poison` is set
        logs = original(batch)
        return {k: tf.where(poison > 0, tf.constant(np.nan, v.dtype), v) for k, v in logs.items()}

    trainer.train_step = poisoned_step
    after_step_2 = {}

    def on_step_end(stage, step, logs):
        if step == 2:
            after_step_2["weights"] = [v.numpy().copy() for v in trainer.net.weights]
            poison.assign(1.0)  # step 3 goes bad

    def dataset_fn(start):
        return pipelines.paired_dataset(f"folder:{data}", "train", batch_size=1, crop_size=16, start_index=start)

    kw = dict(model_dir=str(tmp_path / "run"), stage_steps=[3], batch_size=1, jit_compile=False, verbose=0,
              on_nan=on_nan, on_step_end=on_step_end)
    if on_nan == "stop":
        with pytest.raises(training.TrainingError, match=r"non-finite loss at stage I step 3 .*img[01]"):
            training.train(trainer, config, dataset_fn, **kw)
        return
    summary = training.train(trainer, config, dataset_fn, **kw)
    assert len(summary["skipped_batches"]) == 1 and summary["global_step"] == 3
    # The bad step was undone: the weights are those after step 2.
    for before, v in zip(after_step_2["weights"], trainer.net.weights):
        np.testing.assert_array_equal(before, v.numpy())


def test_a_torn_checkpoint_is_never_picked_up(tmp_path):
    """The newest checkpoint's data file is torn (truncated, as by a crash mid-write): resuming passes
    over it to the previous complete checkpoint."""
    data = make_folder_dataset(tmp_path / "data", n=3, size=(24, 32))
    with pytest.raises(_Stop):
        _run(tmp_path / "run", data, stop_at=(1, 1))  # checkpoints after every step: ckpt-1 .. ckpt-3
    ckpt_dir = tmp_path / "run" / "checkpoints"
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    assert latest.endswith("-3")
    shard = next(ckpt_dir.glob("ckpt-3.data-*"))
    shard.write_bytes(shard.read_bytes()[:100])
    _, summary, calls = _run(tmp_path / "run", data)
    assert summary["resumed_from"].endswith("-2")  # ckpt-3 was passed over
    assert calls[0] == (1, 1)  # the step of the torn checkpoint is trained again


def test_kill_at_random_moments_then_finish_equals_uninterrupted(tmp_path):
    """kill -9 a training process three times at random moments (some land while a checkpoint is being
    written: one is written after every step), re-run the same command until it finishes: the final
    weights and optimizer state equal those of an uninterrupted run, and --keep_checkpoints=2 bounds
    the checkpoints on disk."""
    data = make_folder_dataset(tmp_path / "data", n=3, size=(16, 16))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def cmd(model_dir):
        return [sys.executable, "-m", "erl_derain.cli", "train", f"--model_dir={model_dir}", f"--dataset=folder:{data}",
                "--method=memd", "--crop_size=16", "--batch_size=1", "--stage_steps=14", "--checkpoint_every=1",
                "--keep_checkpoints=2", "--noevaluate_after", "--jit_compile=false", "--seed=5", *TINY_FLAGS]

    subprocess.run(cmd(tmp_path / "ref"), check=True, capture_output=True, env=env, timeout=300)
    rng = np.random.default_rng(0)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    for _ in range(3):
        proc = subprocess.Popen(cmd(tmp_path / "run"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 120
        start = int(tf.train.latest_checkpoint(str(ckpt_dir)).rsplit("-", 1)[1]) if ckpt_dir.exists() and \
            tf.train.latest_checkpoint(str(ckpt_dir)) else 0
        # wait for training to be under way (a new checkpoint), then kill after a random delay
        while time.time() < deadline and proc.poll() is None:
            latest = tf.train.latest_checkpoint(str(ckpt_dir)) if ckpt_dir.exists() else None
            if latest and int(latest.rsplit("-", 1)[1]) > start:
                break
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run(cmd(tmp_path / "run"), check=True, capture_output=True, env=env, timeout=300)
    ref = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "ref" / "checkpoints")))
    got = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(ckpt_dir)))
    names = [n for n in ref.get_variable_to_shape_map() if "OBJECT_GRAPH" not in n]
    assert names and sorted(names) == sorted(n for n in got.get_variable_to_shape_map() if "OBJECT_GRAPH" not in n)
    for name in names:
        np.testing.assert_allclose(got.get_tensor(name), ref.get_tensor(name), rtol=1e-5, atol=1e-6, err_msg=name)
    assert len(list(ckpt_dir.glob("ckpt-*.index"))) <= 2
