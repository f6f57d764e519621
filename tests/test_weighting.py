"""erl_derain.weighting: fixed / GB (Algorithm 1) / LB (Algorithm 2) against references computed
separately in the tests (per-task tapes, hand formulas)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from erl_derain import losses
from erl_derain.weighting import (TaskWeighting, apply_weighted_gradients, parse_task_weights,
                                  weighted_total)

RNG = np.random.default_rng(0)
RAINY = RNG.random((2, 8, 8, 3), dtype=np.float32)
CLEAN = RNG.random((2, 8, 8, 3), dtype=np.float32)


def tiny_model(seed: int = 0) -> keras.Model:
    """Two convs; the last one's kernel is the shared parameter GB looks at."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(3, 3, padding="same", name="shared"),
    ])


def task_fns(tasks):
    return {t: losses.TASK_LOSSES[t] for t in tasks}


def reference_gb_weights(model, tasks):
    """Algorithm 1 by hand: one fresh tape per task, gradient w.r.t. the last kernel only."""
    kernel = model.get_layer("shared").kernel
    norms = []
    for fn in task_fns(tasks).values():
        with tf.GradientTape() as tape:
            loss = fn(CLEAN, model(RAINY))
        norms.append(np.sqrt(np.sum(np.square(tape.gradient(loss, kernel).numpy().astype(np.float64)))))
    norms = np.array(norms)
    return 1.0 - norms / norms.sum()


def run_weights(model, weighting, tasks):
    with tf.GradientTape(persistent=True) as tape:
        output = model(RAINY)
        task_loss = {t: fn(CLEAN, output) for t, fn in task_fns(tasks).items()}
    w = weighting.weights(task_loss, tape=tape, shared=model.get_layer("shared").kernel)
    return task_loss, w


@pytest.mark.parametrize("tasks", [("p", "e"), ("p", "e", "t")])
def test_gb_weights_match_per_task_tapes_and_sum_to_t_minus_1(tasks):
    model = tiny_model()
    _, w = run_weights(model, TaskWeighting("gb", tasks=tasks), tasks)
    got = np.array([w[t].numpy() for t in tasks])
    np.testing.assert_allclose(got, reference_gb_weights(model, tasks), rtol=1e-5, atol=1e-6)
    assert got.sum() == pytest.approx(len(tasks) - 1, abs=1e-5)
    assert np.all((got >= 0) & (got <= 1))


def test_lb_weights_hand_values():
    lb = TaskWeighting("lb")
    # T=2: losses 1, 3 (total 4) -> 1 - 1/4, 1 - 3/4
    w = lb.weights({"p": tf.constant(1.0), "e": tf.constant(3.0)})
    assert [w["p"].numpy(), w["e"].numpy()] == pytest.approx([0.75, 0.25])
    # T=3: losses 1, 2, 5 (total 8) -> 7/8, 6/8, 3/8; sum 2 = T - 1
    w = lb.weights({"p": tf.constant(1.0), "e": tf.constant(2.0), "t": tf.constant(5.0)})
    assert [w[k].numpy() for k in "pet"] == pytest.approx([7 / 8, 6 / 8, 3 / 8])


def test_weights_are_constants():
    x = tf.Variable(2.0)
    with tf.GradientTape(persistent=True) as tape:  # weights and total recorded on the tape too
        task_loss = {"p": x * x, "e": 3.0 * x}
        w = TaskWeighting("lb").weights(task_loss)
        total = weighted_total(task_loss, w)
    for t in w:
        assert tape.gradient(w[t], x) is None
    # d/dx of w_p x^2 + w_e 3x with w constant: w_p 2x + 3 w_e; losses 4, 6 -> w = 0.6, 0.4
    total_grad = tape.gradient(total, x)
    assert total_grad.numpy() == pytest.approx(0.6 * 4 + 0.4 * 3)


def test_zero_denominator_falls_back_to_equal_weights():
    zeros = {"p": tf.constant(0.0), "e": tf.constant(0.0), "t": tf.constant(0.0)}
    w = TaskWeighting("lb").weights(zeros)
    assert [w[k].numpy() for k in "pet"] == pytest.approx([2 / 3] * 3)
    # GB with losses that do not depend on the shared variable (gradients None -> norms 0)
    shared = tf.Variable(np.ones((3, 3), np.float32))
    other = tf.Variable(1.0)
    with tf.GradientTape(persistent=True) as tape:
        task_loss = {"p": other * 2.0, "e": other * other}
    w = TaskWeighting("gb").weights(task_loss, tape=tape, shared=shared)
    assert [w["p"].numpy(), w["e"].numpy()] == pytest.approx([0.5, 0.5])
    assert all(np.isfinite(v.numpy()) for v in w.values())


def test_fixed_weights_and_parsing():
    w = TaskWeighting("fixed", {"e": 0.01}).weights({"p": tf.constant(2.0), "e": tf.constant(5.0)})
    assert w["p"].numpy() == 1.0 and w["e"].numpy() == pytest.approx(0.01)
    assert TaskWeighting("fixed", "p=1, e=0.01").fixed == {"p": 1.0, "e": 0.01}
    assert weighted_total({"p": tf.constant(2.0), "e": tf.constant(5.0)}, w).numpy() == pytest.approx(2.05)
    assert parse_task_weights(None) == {} and parse_task_weights("") == {}
    for bad in ("p", "p=x", "p=-1", "p=1,p=2", "p=nan"):
        with pytest.raises(ValueError, match="--task_weights"):
            parse_task_weights(bad)
    with pytest.raises(ValueError, match="--task_weights.*--tasks"):
        TaskWeighting("fixed", {"t": 1.0}, tasks=("p", "e"))


def test_bad_mode_and_single_task_errors():
    with pytest.raises(ValueError, match="--task_weighting"):
        TaskWeighting("uncertainty")
    for mode in ("gb", "lb"):
        with pytest.raises(ValueError, match="--task_weighting.*--tasks"):
            TaskWeighting(mode, tasks=("p",))
        with pytest.raises(ValueError, match="--task_weighting.*--tasks"):
            TaskWeighting(mode).weights({"p": tf.constant(1.0)}, tape=tf.GradientTape(persistent=True),
                                        shared=tf.Variable(1.0))
    TaskWeighting("fixed", tasks=("p",))  # one task is fine with fixed weights
    assert TaskWeighting("GB", tasks="p,e").tasks == ("p", "e")  # a --tasks flag value


def test_gb_needs_persistent_tape_and_shared():
    v = tf.Variable(1.0)
    with tf.GradientTape() as tape:
        task_loss = {"p": v * 2.0, "e": v * v}
    with pytest.raises(ValueError, match="persistent=True"):
        TaskWeighting("gb").weights(task_loss, tape=tape, shared=v)
    with pytest.raises(ValueError, match="shared"):
        TaskWeighting("gb").weights(task_loss, tape=tape)
    with pytest.raises(ValueError, match="tape"):
        TaskWeighting("gb").weights(task_loss, shared=v)


def test_apply_weighted_gradients_equals_gradient_of_weighted_total():
    tasks = ("p", "e", "t")
    model = tiny_model(1)
    # the weighted gradients from the GB tape (persistent, already used for the per-task norms)
    with tf.GradientTape(persistent=True) as tape:
        output = model(RAINY)
        task_loss = {t: fn(CLEAN, output) for t, fn in task_fns(tasks).items()}
    w = TaskWeighting("gb").weights(task_loss, tape=tape, shared=model.get_layer("shared").kernel)
    persistent_grads = apply_weighted_gradients(tape, task_loss, w, model.trainable_variables)
    # direct reference: a separate tape on sum_t w_t L_t with the weights as plain numbers
    w_np = {t: float(w[t].numpy()) for t in tasks}
    with tf.GradientTape() as ref_tape:
        output = model(RAINY)
        total = sum(w_np[t] * fn(CLEAN, output) for t, fn in task_fns(tasks).items())
    ref = ref_tape.gradient(total, model.trainable_variables)
    assert len(persistent_grads) == len(ref) == 4
    for g, r in zip(persistent_grads, ref):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=2e-4, atol=1e-6)


def test_gb_training_step_in_tf_function():
    tasks = ("p", "e", "t")
    model = tiny_model(2)
    optimizer = keras.optimizers.SGD(learning_rate=0.05)
    weighting = TaskWeighting("gb", tasks=tasks)
    kernel = model.get_layer("shared").kernel

    @tf.function
    def train_step(rainy, clean):
        with tf.GradientTape(persistent=weighting.needs_persistent_tape) as tape:
            output = model(rainy, training=True)
            task_loss = losses.task_losses(tasks, clean, output, texture_reduction="mean")
        w = weighting.weights(task_loss, tape=tape, shared=kernel)
        total = weighted_total(task_loss, w)
        apply_weighted_gradients(tape, task_loss, w, model.trainable_variables, optimizer=optimizer)
        return total, w, task_loss

    before = kernel.numpy().copy()
    steps = []
    for _ in range(2):
        total, w, task_loss = train_step(RAINY, CLEAN)
        w_np = np.array([w[t].numpy() for t in tasks])
        l_np = np.array([task_loss[t].numpy() for t in tasks])
        assert total.numpy() == pytest.approx(float(np.sum(w_np * l_np)), rel=1e-6)
        assert w_np.sum() == pytest.approx(2.0, abs=1e-5)
        steps.append(w_np)
    assert not np.allclose(kernel.numpy(), before)
    assert not np.allclose(steps[0], steps[1], rtol=0, atol=1e-7)  # recomputed every step


def test_lb_and_fixed_work_in_tf_function_with_plain_tape():
    for mode in ("lb", "fixed"):
        model = tiny_model(3)
        weighting = TaskWeighting(mode, {"e": 0.01} if mode == "fixed" else None)

        @tf.function
        def step():
            with tf.GradientTape(persistent=weighting.needs_persistent_tape) as tape:
                output = model(RAINY)
                task_loss = losses.task_losses("p,e", CLEAN, output)
            w = weighting.weights(task_loss, tape=tape)
            grads = apply_weighted_gradients(tape, task_loss, w, model.trainable_variables)
            return task_loss, w, grads

        task_loss, w, grads = step()
        lp, le = task_loss["p"].numpy(), task_loss["e"].numpy()
        expected = [1 - lp / (lp + le), 1 - le / (lp + le)] if mode == "lb" else [1.0, 0.01]
        assert [w["p"].numpy(), w["e"].numpy()] == pytest.approx(expected, rel=1e-5)
        assert all(g is not None for g in grads)


# -- arithmetic, non-finite values, mixed precision --------------------------------------------------


def test_authors_and_stable_arithmetic_hand_values():
    """Losses 1 and 1e9 (LB): exactly, w = (1e9, 1) / (1e9 + 1). In float32 1e9 + 1 rounds to 1e9, so
    the authors' 1 - v / S gives (1, 0): the dominant task's weight is exactly 0. The stable form
    (the other tasks' sum over S) keeps it: 1 / 1e9."""
    losses = {"p": tf.constant(1.0), "e": tf.constant(1e9)}
    authors = TaskWeighting("lb", arithmetic="authors").weights(losses)
    assert authors["p"].numpy() == 1.0 and authors["e"].numpy() == 0.0
    stable = TaskWeighting("lb", arithmetic="stable").weights(losses)
    assert stable["p"].numpy() == 1.0
    assert stable["e"].numpy() == pytest.approx(1e-9, rel=1e-6)
    # three tasks, S = 8: stable (2+5, 1+5, 1+2) / 8 = authors 1 - (1, 2, 5) / 8; sum T - 1 = 2
    three = {"p": tf.constant(1.0), "e": tf.constant(2.0), "t": tf.constant(5.0)}
    for arithmetic in ("authors", "stable"):
        w = TaskWeighting("lb", arithmetic=arithmetic).weights(three)
        assert [w[k].numpy() for k in "pet"] == pytest.approx([7 / 8, 6 / 8, 3 / 8])
    with pytest.raises(ValueError, match="--gb_arithmetic"):
        TaskWeighting("gb", arithmetic="exact")


@pytest.mark.parametrize("arithmetic", ["authors", "stable"])
def test_a_non_finite_loss_or_norm_gives_nan_weights_never_equal_shares(arithmetic):
    """A NaN or infinite loss (LB) or gradient norm (GB) must surface (NaN weights, which the training
    loop's --on_nan guard reports), not turn into the equal weights 1 - 1/T."""
    for bad in (float("nan"), float("inf")):
        w = TaskWeighting("lb", arithmetic=arithmetic).weights({"p": tf.constant(1.0), "e": tf.constant(bad)})
        assert all(np.isnan(v.numpy()) for v in w.values()), (bad, w)
    shared = tf.Variable(np.ones((2,), np.float32))
    with tf.GradientTape(persistent=True) as tape:
        task_loss = {"p": tf.reduce_sum(shared), "e": tf.reduce_sum(tf.sqrt(shared - 1.0))}  # d sqrt(0) = inf
    w = TaskWeighting("gb", arithmetic=arithmetic).weights(task_loss, tape=tape, shared=shared)
    assert all(np.isnan(v.numpy()) for v in w.values())
    # still: all-zero norms or losses are the equal weights (nothing is wrong there)
    w = TaskWeighting("lb", arithmetic=arithmetic).weights({"p": tf.constant(0.0), "e": tf.constant(0.0)})
    assert [w["p"].numpy(), w["e"].numpy()] == pytest.approx([0.5, 0.5])


def test_gb_under_mixed_float16_stays_finite_and_matches_float32():
    """A float16 last layer: the [0, 255] texture loss's gradient (about 2e11) overflows float16 (at most
    65504). The norms of the normalised losses stay finite and close to the float32 ones (before, the
    texture norm was NaN and the weights silently fell back to 2/3 each)."""
    rng = np.random.default_rng(5)
    rainy = rng.random((2, 16, 16, 3), dtype=np.float32) * 255
    clean = rng.random((2, 16, 16, 3), dtype=np.float32) * 255
    results = {}
    try:
        for policy in ("float32", "mixed_float16"):
            keras.mixed_precision.set_global_policy(policy)
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((16, 16, 3)),
                                      keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
                                      keras.layers.Conv2D(3, 3, padding="same", name="shared")])
            kernel = model.get_layer("shared").kernel
            with tf.GradientTape(persistent=True) as tape:
                output = tf.cast(model(rainy), tf.float32) + rainy
                task_loss = losses.task_losses("p,e,t", clean, output, texture_reduction="mean")
            norms = [float(n) for n in TaskWeighting.gradient_norms(task_loss, tape=tape, shared=kernel)]
            weights = {a: {k: float(v) for k, v in TaskWeighting("gb", arithmetic=a).weights(
                task_loss, tape=tape, shared=kernel).items()} for a in ("authors", "stable")}
            results[policy] = norms, weights
            if policy == "float32":  # the normalised losses' norms, divided back, are the plain tape's
                for loss, norm in zip(task_loss.values(), norms):
                    plain = np.linalg.norm(tape.gradient(loss, kernel).numpy().astype(np.float64))
                    assert norm == pytest.approx(plain, rel=1e-6)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    (n32, w32), (n16, w16) = results["float32"], results["mixed_float16"]
    assert n32[2] > 1e10 and all(np.isfinite(n16))
    np.testing.assert_allclose(n16, n32, rtol=2e-3)  # measured: 3e-4
    for a in ("authors", "stable"):
        assert all(np.isfinite(list(w16[a].values())))
        for t in "pet":
            assert w16[a][t] == pytest.approx(w32[a][t], rel=1e-3, abs=1e-6), (a, t)
        assert w16[a]["t"] < 1e-5  # not the equal share 2/3
