"""--sync_batchnorm: with two replicas, BatchNorm statistics are those of the global batch (NumPy's
mean and variance of all the examples), and a two-replica MENET run equals the one-device run with
the same global batch; without it they are not.

Logical CPU devices must exist before TensorFlow starts, so the replica runs are subprocesses."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from .test_distribute import ENV, _run, data  # noqa: F401  (the module's data fixture)

# Keras' BatchNormalization and JRGR's PyTorch-style subclass (unbiased running variance), on two
# replicas of 3 examples each; momentum 0 so that the moving statistics are the batch's own.
SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from erl_derain import distribute
    distribute.split_cpu(2)
    import keras
    from erl_derain.methods.jrgr import TorchBatchNorm

    sync = sys.argv[1] == "sync"
    x = np.random.default_rng(0).normal(size=(6, 4, 5, 3)).astype("float32")
    x[3:] = 3.0 * x[3:] + 2.0  # the second replica's slice has other statistics than the first's
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for kind in ("keras", "torch"):
        with strategy.scope():
            cls = keras.layers.BatchNormalization if kind == "keras" else TorchBatchNorm
            layer = cls(momentum=0.0, epsilon=1e-5)
            net = keras.Sequential([keras.Input((4, 5, 3)), layer])
        if sync:
            assert distribute.synchronize_batchnorm([net]) == 1
        dist = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(x[3 * ctx.replica_id_in_sync_group:3 * (ctx.replica_id_in_sync_group + 1)]))
        y = strategy.run(tf.function(lambda t: net(t, training=True)), args=(dist,))
        out[kind] = {"mean": layer.moving_mean.numpy().tolist(), "var": layer.moving_variance.numpy().tolist(),
                     "y": np.concatenate([v.numpy() for v in strategy.experimental_local_results(y)]).tolist()}
    print("RESULT" + json.dumps(out))
""")


def _stats(mode):
    out = _run([sys.executable, "-c", SCRIPT, mode])
    import json

    return json.loads(out.split("RESULT", 1)[1])


def _global():
    x = np.random.default_rng(0).normal(size=(6, 4, 5, 3)).astype("float32")
    x[3:] = 3.0 * x[3:] + 2.0
    return x.astype(np.float64)


def test_two_replicas_use_the_global_batch_statistics():
    x = _global()
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    n = x.size // 3
    normalised = (x - mean) / np.sqrt(var + 1e-5)
    synced = _stats("sync")
    np.testing.assert_allclose(synced["keras"]["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(synced["keras"]["var"], var, rtol=1e-5)
    np.testing.assert_allclose(synced["keras"]["y"], normalised, atol=1e-4)
    # PyTorch's running variance is the unbiased one over all n = 120 values of a channel
    np.testing.assert_allclose(synced["torch"]["var"], var * n / (n - 1), rtol=1e-5)
    np.testing.assert_allclose(synced["torch"]["y"], normalised, atol=1e-4)

    # Without it: each replica normalises with its own slice's statistics, and the moving variance
    # kept is the first replica's (Keras' MirroredVariable update in a replica context).
    local = _stats("local")
    first = x[:3]
    np.testing.assert_allclose(local["keras"]["var"], first.var(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(local["keras"]["y"][:3], (first - first.mean((0, 1, 2))) /
                               np.sqrt(first.var((0, 1, 2)) + 1e-5), atol=1e-4)
    assert np.max(np.abs(np.array(local["keras"]["var"]) - var)) > 0.5


def _menet_cli(model_dir, data, *args):
    return [sys.executable, "-m", "erl_derain.cli", "train", "--method=menet", f"--model_dir={model_dir}",
            f"--dataset=folder:{data}", "--crop_size=16", "--jit_compile=false", "--noevaluate_after",
            "--menet_blocks=1", "--menet_width=16", "--menet_skip_width=4", "--menet_ca=false",
            # fixed task weights: GB/LB weights are computed per replica from its own losses, which
            # no BatchNorm setting makes equal to the global batch's
            "--menet_task_weighting=fixed", "--stage_steps=3", "--checkpoint_every=3", *args]


def _bn_and_weights(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith("net/") and "OPTIMIZER_SLOT" not in k}


@pytest.mark.parametrize("sync", [True, False])
def test_menet_on_two_replicas_equals_one_device_only_with_sync_batchnorm(data, tmp_path, sync):  # noqa: F811
    single, mirrored = tmp_path / "single", tmp_path / "mirrored"
    _run(_menet_cli(single, data, "--batch_size=4"))
    out = _run(_menet_cli(mirrored, data, "--batch_size=2", "--strategy=mirrored", "--logical_cpus=2",
                          *(["--sync_batchnorm"] if sync else [])))
    a, b = _bn_and_weights(single), _bn_and_weights(mirrored)
    assert a.keys() == b.keys()
    variances = [k for k in a if "moving_variance" in k]
    assert variances
    worst_variance = max(float(np.max(np.abs(a[k] - b[k]))) for k in variances)
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    if sync:
        assert "BatchNorm layer(s) use the statistics of the global batch" in out
        assert worst < 1e-4, worst
    else:
        assert worst_variance > 1e-3, worst_variance  # per-replica statistics: another run
