"""tf.distribute, mixed precision and --stop_after: a run on several replicas or workers gives the
weights of a one-device run with the same global batch; mixed precision keeps float32 variables.

Strategies need their devices before TensorFlow starts, so those runs are separate processes of the
real CLI (MultiWorkerMirroredStrategy: two workers on 127.0.0.1 ports, TF_CONFIG as on a cluster)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from erl_derain import distribute

from .conftest import TINY_FLAGS, make_folder_dataset, run_settings

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
# ERL-Net MA_D on tiny widths; 3 stages so that resuming mid-stage and across stages is exercised.
STEPS = "--stage_steps=3,2,2"


def _cli(model_dir, data, *args, env=None):
    return [sys.executable, "-m", "erl_derain.cli", "train", f"--model_dir={model_dir}", f"--dataset=folder:{data}",
            "--crop_size=16", "--jit_compile=false", "--noevaluate_after", "--flip", "--checkpoint_every=2",
            STEPS, *TINY_FLAGS, *args]


def _run(cmd, env=None, timeout=600):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def _weights(model_dir) -> dict:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")))
    names = [k for k in reader.get_variable_to_shape_map()
             if k.startswith(("net/", "clean_ae/")) and "OPTIMIZER_SLOT" not in k]
    assert names
    return {k: reader.get_tensor(k) for k in names} | {
        "global_step": reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE")}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and int(a["global_step"]) == int(b["global_step"]) == 7
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a if k != "global_step")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("dist") / "data", n=6, size=(32, 32))


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    """One device, global batch 4."""
    model_dir = tmp_path_factory.mktemp("single") / "run"
    _run(_cli(model_dir, data, "--batch_size=4"))
    return _weights(model_dir)


# Adam moves each weight by up to lr = 4e-4 per step, 2.8e-3 in 7 steps; summing gradients over
# replicas only reorders float additions (Adam amplifies that a little where gradients are ~0).
TOLERANCE = 1e-4


def test_a_different_data_order_is_detected(data, single, tmp_path):
    """The comparisons below can fail: another seed (other crops and flips) moves the weights by far
    more than the tolerance."""
    _run(_cli(tmp_path / "run", data, "--batch_size=4", "--seed=1"))
    assert _max_diff(single, _weights(tmp_path / "run")) > 10 * TOLERANCE


def test_mirrored_on_two_logical_cpus_equals_one_device_and_resumes(data, single, tmp_path):
    mirrored = tmp_path / "mirrored"
    out = _run(_cli(mirrored, data, "--batch_size=2", "--strategy=mirrored", "--logical_cpus=2"))
    assert "Training done" in out
    assert _max_diff(single, _weights(mirrored)) < TOLERANCE
    assert run_settings(mirrored)["strategy"] == "mirrored"
    # Stopped mid-stage II (stage I has 3 steps) and resumed under the strategy.
    resumed = tmp_path / "resumed"
    out = _run(_cli(resumed, data, "--batch_size=2", "--strategy=mirrored", "--logical_cpus=2", "--stop_after=4"))
    assert "Stopped after 4 steps" in out
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(resumed / "checkpoints")))
    assert int(reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE")) == 4
    _run(_cli(resumed, data, "--batch_size=2", "--strategy=mirrored", "--logical_cpus=2"))
    assert _max_diff(_weights(mirrored), _weights(resumed)) < 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_on_loopback_equals_one_worker(data, single, tmp_path):
    """Two worker processes (TF_CONFIG on 127.0.0.1), per-replica batch 2: the global batch of 4 of
    the one-device run, each worker reading only its two rows of it. Only the chief (worker 0) writes
    the config, logs and checkpoints."""
    ports = [_free_port(), _free_port()]
    model_dir = tmp_path / "multi"
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(_cli(model_dir, data, "--batch_size=2", "--strategy=multi_worker"),
                                      env={**ENV, "TF_CONFIG": json.dumps(tf_config)}, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, out[-2000:] + err[-3000:]
        outs.append(out)
    assert f"checkpoints in {model_dir / 'checkpoints'}" in outs[0]
    assert "checkpoints in" not in outs[1] and "the chief (worker 0) writes the checkpoints" in outs[1]
    # each worker reads only its replica's half of every global batch (tests/test_input_sharding.py)
    assert "This worker reads rows 0-1 of each global batch of 4" in outs[0]
    assert "This worker reads rows 2-3 of each global batch of 4" in outs[1]
    assert _max_diff(single, _weights(model_dir)) < TOLERANCE
    assert run_settings(model_dir)["strategy"] == "multi_worker"
    assert sorted(os.listdir(model_dir)) == ["checkpoints", "config.json", "flags.txt", "logs"]


def test_task_weights_are_averaged_over_replicas():
    """LB weights w_t = 1 - L_t / sum(L) per replica, then averaged: replica 0 has losses (1, 3) ->
    (0.75, 0.25), replica 1 (1, 1) -> (0.5, 0.5); every replica must apply (0.625, 0.375)."""
    script = textwrap.dedent("""
        import json, tensorflow as tf
        from erl_derain import distribute
        from erl_derain.weighting import TaskWeighting
        distribute.split_cpu(2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        w = TaskWeighting("lb", tasks="p,e")
        def replica():
            r = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)
            out = w.weights({"p": tf.constant(1.0), "e": 3.0 - 2.0 * r})
            scaled = distribute.for_gradients(tf.constant(1.0))
            return tf.stack([out["p"], out["e"], scaled])
        per = strategy.experimental_local_results(tf.function(lambda: strategy.run(replica))())
        print(json.dumps([t.numpy().tolist() for t in per]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    per_replica = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(per_replica) == 2
    for p, e, scaled in per_replica:
        assert p == pytest.approx(0.625) and e == pytest.approx(0.375)
        assert scaled == pytest.approx(0.5)  # a loss is divided by the 2 replicas before its gradient


@pytest.fixture
def mixed_policy():
    name = distribute.set_precision(True)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy("float32")


TINY_METHODS = {
    "erlnet": {"method": "erlnet", "erl_strategy": "ma_d", "widths": [8, 16], "bottleneck_width": 16,
               "dense_layers": 2, "growth": 8, "se_ratio": 2},
    "menet": {"method": "menet", "menet_blocks": 1, "task_weighting": "gb"},
    "iadn": {"method": "iadn", "iadn_width": 8, "iadn_blocks": 1},
    "jrgr": {"method": "jrgr", "unet_depth": 3, "unet_filters": 8, "resnet_blocks": 1, "gen_filters": 8,
             "disc_filters": 8, "pool_size": 0},
}


@pytest.mark.parametrize("method", sorted(TINY_METHODS))
def test_mixed_precision_steps_run_and_keep_float32_variables(mixed_policy, method):
    from erl_derain.methods import make_trainer

    assert mixed_policy == "mixed_bfloat16"  # CPU (mixed_float16 is the GPU's)
    trainer = make_trainer(TINY_METHODS[method])
    trainer.build_networks((1, 32, 32, 3))
    x = tf.random.stateless_uniform((2, 32, 32, 3), seed=[0, 1])
    before = {v.path: v.numpy() for item in trainer.checkpoint_items().values() if isinstance(item, keras.Layer)
              for v in item.trainable_weights}
    for stage in range(len(trainer.stages)):
        trainer.set_stage(stage)
        logs = tf.function(trainer.train_step)({"rainy": x, "clean": 0.8 * x, "real": x})
        assert all(np.isfinite(float(v)) for v in logs.values())
    variables = [v for item in trainer.checkpoint_items().values() if isinstance(item, keras.Layer)
                 for v in item.weights]
    assert {v.dtype for v in variables} == {"float32"}
    assert any(not np.array_equal(before[v.path], v.numpy()) for v in variables if v.path in before)
    layer_policies = {layer.dtype_policy.name for net in trainer.checkpoint_items().values()
                      if isinstance(net, keras.Model) for layer in net._flatten_layers() if layer.weights}
    assert "mixed_bfloat16" in layer_policies
    assert trainer.inference_model()(x).dtype == tf.float32


def test_mixed_float16_uses_dynamic_loss_scaling():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        from erl_derain.methods import make_trainer

        trainer = make_trainer(TINY_METHODS["erlnet"])
        assert all(isinstance(o, keras.optimizers.LossScaleOptimizer) for o in trainer.optimizers.values())
        trainer.build_networks((1, 16, 16, 3))
        x = tf.random.stateless_uniform((1, 16, 16, 3), seed=[0, 2])
        logs = tf.function(trainer.train_step)({"rainy": x, "clean": x})
        assert np.isfinite(float(logs["loss"]))
        jrgr = make_trainer(TINY_METHODS["jrgr"])  # one gradient, three optimizers: one static scale
        assert {o.loss_scale_factor for o in jrgr.optimizers_by_name.values()} == {1024.0}
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_strategy_errors_name_what_to_give(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.DistributeError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(distribute.DistributeError, match="not valid JSON"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}))
    with pytest.raises(distribute.DistributeError, match="not in its cluster"):
        distribute.make_strategy("multi_worker")
    with pytest.raises(distribute.DistributeError, match="--tpu"):
        distribute.make_strategy("tpu")
    with pytest.raises(distribute.DistributeError, match="--strategy must be one of"):
        distribute.make_strategy("horovod")
    strategy = distribute.make_strategy("default")
    assert distribute.is_chief(strategy) and strategy.num_replicas_in_sync == 1
    assert float(distribute.for_gradients(tf.constant(3.0))) == 3.0  # one replica: unchanged


def test_cli_mixed_precision_and_bad_strategy(run_cli, tmp_path):
    data = make_folder_dataset(tmp_path / "d", n=2, size=(16, 16))
    try:
        code, out, err = run_cli("train", f"--model_dir={tmp_path / 'run'}", f"--dataset=folder:{data}",
                                 "--crop_size=16", "--batch_size=2", "--jit_compile=false", "--noevaluate_after",
                                 "--method=memd", "--stage_steps=2", "--mixed_precision", *TINY_FLAGS)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert code == 0, err
    assert run_settings(tmp_path / "run")["mixed_precision"] is True
    code, out, err = run_cli("train", f"--model_dir={tmp_path / 'run2'}", f"--dataset=folder:{data}",
                             "--strategy=tpu", "--stage_steps=1", *TINY_FLAGS)
    assert code == 2 and "--strategy=tpu needs --tpu" in err


def test_xla_under_a_strategy_on_cpu_is_refused_clearly(data, tmp_path):
    """TF cannot XLA-compile a mirrored step on CPU devices (variables on another device): say so."""
    out = subprocess.run(_cli(tmp_path / "run", data, "--batch_size=2", "--strategy=mirrored", "--logical_cpus=2",
                              "--jit_compile=true"), capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 1 and "--jit_compile=true under a --strategy needs GPUs" in out.stderr
    assert "Traceback" not in out.stderr


def test_every_method_steps_under_mirrored():
    """MENET (BN, GB weights) and JRGR (seven per-replica image pools, eight optimizers) run their
    stages on 2 logical CPUs with finite losses; the pools fill per replica (2 examples each)."""
    script = textwrap.dedent("""
        import json, math, tensorflow as tf
        from erl_derain import distribute
        distribute.split_cpu(2)
        from erl_derain.methods import make_trainer
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        configs = json.loads('CONFIGS')
        x = tf.random.stateless_uniform((4, 32, 32, 3), seed=[1, 2])
        batch = {"rainy": x, "clean": 0.8 * x, "real": x, "segmentation": tf.zeros((4, 32, 32), tf.int32)}
        result = {}
        for name, cfg in configs.items():
            with strategy.scope():
                t = make_trainer(cfg)
                t.build_networks((1, 32, 32, 3))
            it = iter(distribute.distribute_batches(strategy, lambda: tf.data.Dataset.from_tensors(batch).repeat(), 4))
            finite = True
            for si in range(len(t.stages)):
                t.set_stage(si)
                step = tf.function(lambda b: strategy.run(t.train_step, args=(b,)))
                logs = step(next(it))
                finite &= all(math.isfinite(float(v)) for k in logs
                              for v in strategy.experimental_local_results(logs[k]))
            counts = ([int(c) for c in strategy.experimental_local_results(t.pools["b_s"].count)]
                      if getattr(t, "pools", None) else [])
            result[name] = {"finite": finite, "pool_counts": counts}
        print(json.dumps(result))
    """).replace("CONFIGS", json.dumps({
        "menet": TINY_METHODS["menet"],
        "jrgr": {**TINY_METHODS["jrgr"], "pool_size": 3, "crop_size": 32}}))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(r["finite"] for r in result.values()), result
    assert result["jrgr"]["pool_counts"] == [2, 2]  # one joint step, 2 examples per replica
