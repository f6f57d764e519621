"""``--on_nan=skip_batch`` for every registered method: a step whose loss is not finite is undone
completely, so a run that met one poisoned batch ends bit-identical to a run that never saw it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from erl_derain import training
from erl_derain.methods import discover, make_trainer

METHODS = discover()



def _record(method):
    from erl_derain.run_config import RunConfig, make_record

    spec = METHODS[method]
    return make_record(method, RunConfig(crop_size=spec.tiny_crop, batch_size=2), **dict(spec.tiny))


def _batches(n, side, poison_at=None):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        rainy = rng.random((2, side, side, 3), np.float32)
        batch = {"rainy": rainy, "clean": np.clip(rainy - 0.2, 0, 1).astype(np.float32),
                 "real": rng.random((2, side, side, 3), np.float32), "name": np.array([b"a", b"b"])}
        out.append(batch)
    if poison_at is not None:
        bad = {k: v.copy() for k, v in out[poison_at].items()}
        bad["rainy"][0, 0, 0, 0] = np.nan
        out.insert(poison_at, bad)
    return out


def _train(method, tmp_path, batches, name, steps):
    config = _record(method)
    side = config.run.crop_size
    keras.utils.set_random_seed(0)
    trainer = make_trainer(config)

    def dataset_fn(start):
        assert start % 2 == 0
        sliced = batches[start // 2:]
        return tf.data.Dataset.from_generator(lambda: iter(sliced), output_signature={
            k: tf.TensorSpec((2, side, side, 3), tf.float32) if k != "name" else tf.TensorSpec((2,), tf.string)
            for k in sliced[0]})

    summary = training.train(trainer, config, dataset_fn, model_dir=str(tmp_path / name), stage_steps=steps,
                             batch_size=2, verbose=0, on_nan="skip_batch", jit_compile=False, checkpoint_every=1000,
                             plateau=training.PlateauSchedule(window=0))
    weights = {k: [w.numpy() for w in (v.weights if isinstance(v, keras.Layer) else [v])]
               for k, v in trainer.checkpoint_items().items() if not k.startswith("optimizer")}
    return summary, weights


@pytest.mark.parametrize("method", sorted(METHODS))
def test_skip_batch_undoes_the_poisoned_step(method, tmp_path):
    stages = len(make_trainer(_record(method)).stages)
    side = METHODS[method].tiny_crop
    # Two batches per stage; the poisoned run meets a NaN batch second, in its first stage, which is
    # given one step more for it (a skipped batch is consumed and counts as a step).
    clean = _batches(2 * stages, side)
    poisoned = _batches(2 * stages, side, poison_at=1)
    s_clean, w_clean = _train(method, tmp_path, clean, "clean", [2] * stages)
    s_poison, w_poison = _train(method, tmp_path, poisoned, "poisoned", [3] + [2] * (stages - 1))
    assert len(s_poison["skipped_batches"]) == 1 and not s_clean["skipped_batches"]
    for key in w_clean:
        for a, b in zip(w_clean[key], w_poison[key]):
            np.testing.assert_array_equal(a, b, err_msg=f"{method}: {key} differs from the run without the batch")
