"""MENET against the numbers the authors' own TF1 code computes (SumiHui/MENET, ``heavy/template/``
``menet_shallow_new_ca.py`` with ``*_edge_gram_gradbalance.py`` (GB) and ``*_edge_gram_lossbalance.py``
(LB)), kept in the project's shared reference data as ``menet_reference.npz``: the same seeded
weights loaded into our network, batch 2 of 64x64 images in [0, 255]. The tests skip when that file is
absent.

The TF1 variables map to our layers as follows (``derain/`` scope, creation order of the unnamed
``batch_normalization_K`` layers, which TF1 numbers per variable scope):

==========================================  ==========================================
TF1 (authors)                               ours (``MENET``)
==========================================  ==========================================
``layer1/layer1_conv/kernel``               ``layer1``;  ``batch_normalization`` -> ``bn1``
``layer2/layer2_conv/kernel``               ``layer2``;  ``batch_normalization_1`` -> ``bn2``
``ca/squeeze_1/squeeze_1_conv/kernel``      ``ca.squeeze_1``; ``ca/batch_normalization`` -> ``ca.bn_s1``
``ca/layer_1/layer_1_conv/kernel``          ``ca.layer_1``; ``ca/batch_normalization_1`` -> ``ca.bn_1``
``ca/squeeze_2/squeeze_2_conv/kernel``      ``ca.squeeze_2``; ``ca/batch_normalization_2`` -> ``ca.bn_s2``
``ca/layer_2/layer_2_conv/kernel``          ``ca.layer_2``; ``ca/batch_normalization_3`` -> ``ca.bn_2``
``ca/excitation_1/excitation_1_conv/kernel``  ``ca.excitation``; ``ca/batch_normalization_4`` -> ``ca.bn_e``
``res_i_a/res_i_a_conv/kernel``             ``res_blocks[i].conv_a``; ``batch_normalization_{2+2i}`` -> ``bn_a``
``res_i_b/res_i_b_conv/kernel``             ``res_blocks[i].conv_b``; ``batch_normalization_{3+2i}`` -> ``bn_b``
``layer3/layer3_conv/kernel``               ``layer3``;  ``batch_normalization_18`` -> ``bn3``
``layer4/layer4_conv/kernel``               ``layer4``;  ``batch_normalization_19`` -> ``bn4``
``layer5/layer5_conv/kernel``               ``layer5`` (no BN: the residual head)
==========================================  ==========================================

BN variables: ``gamma, beta, moving_mean, moving_variance`` (Keras' weight order).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from erl_derain.methods import menet

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "menet_reference.npz"
FLAGS_DIR = Path(__file__).resolve().parents[1] / "flags" / "menet"
BN_KEYS = ("gamma", "beta", "moving_mean", "moving_variance")


@pytest.fixture(scope="module")
def ref():
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is absent")
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


def load_reference_weights(net: menet.MENET, ref: dict) -> None:
    """Set every weight of ``net`` from the TF1 variables (table above); every TF1 variable is used
    exactly once and every weight of ``net`` is set."""
    used = []

    def tf1(name):
        key = f"weights/derain/{name}:0"
        used.append(key)
        return ref[key]

    def conv(layer, name, scope=""):
        layer.set_weights([tf1(f"{scope}{name}/{name}_conv/kernel")])

    def bn(layer, name):
        layer.set_weights([tf1(f"{name}/{k}") for k in BN_KEYS])

    conv(net.layer1, "layer1"), bn(net.bn1, "batch_normalization")
    conv(net.layer2, "layer2"), bn(net.bn2, "batch_normalization_1")
    ca = net.ca
    for k, (c, b, name) in enumerate(((ca.squeeze_1, ca.bn_s1, "squeeze_1"), (ca.layer_1, ca.bn_1, "layer_1"),
                                      (ca.squeeze_2, ca.bn_s2, "squeeze_2"), (ca.layer_2, ca.bn_2, "layer_2"),
                                      (ca.excitation, ca.bn_e, "excitation_1"))):
        conv(c, name, "ca/"), bn(b, "ca/batch_normalization" + (f"_{k}" if k else ""))
    for i, block in enumerate(net.res_blocks):
        conv(block.conv_a, f"res_{i}_a"), bn(block.bn_a, f"batch_normalization_{2 + 2 * i}")
        conv(block.conv_b, f"res_{i}_b"), bn(block.bn_b, f"batch_normalization_{3 + 2 * i}")
    conv(net.layer3, "layer3"), bn(net.bn3, "batch_normalization_18")
    conv(net.layer4, "layer4"), bn(net.bn4, "batch_normalization_19")
    conv(net.layer5, "layer5")
    assert sorted(used) == sorted(k for k in ref if k.startswith("weights/"))
    assert len(used) == len(net.weights) == 126


def reference_trainer(ref, mode="gb", arithmetic="authors", **kwargs) -> menet.MENETTrainer:
    """MENET with CA, 8 blocks, width 64 / 16, on the authors' [0, 255] scale and texture form."""
    trainer = menet.MENETTrainer(menet.MENETConfig(value_range=255.0), task_weighting=mode,
                                 texture_reduction="mean", gb_arithmetic=arithmetic, **kwargs)
    trainer.build_networks((2, 64, 64, 3))
    load_reference_weights(trainer.net, ref)
    return trainer


def batch(ref) -> dict:
    """The reference's [0, 255] inputs as the library's [0, 1] batch."""
    return {"rainy": tf.constant(ref["inputs/rainy"] / 255.0, tf.float32),
            "clean": tf.constant(ref["inputs/clean"] / 255.0, tf.float32)}


def test_train_mode_output_matches_the_authors_graph(ref):
    trainer = reference_trainer(ref)
    out = trainer.net.derain_scaled(tf.constant(ref["inputs/rainy"]), training=True).numpy()
    # measured: max |diff| 1.5e-5 on [0, 255] (float32 rounding; BN batch statistics)
    np.testing.assert_allclose(out, ref["gb/output"], rtol=0, atol=2e-4)
    np.testing.assert_array_equal(ref["gb/output"], ref["lb/output"])
    # the trainer's own path: [0, 1] batch -> x 255 -> network -> losses on [0, 255]
    _, via_batch = trainer.forward(batch(ref), training=True)
    np.testing.assert_allclose(via_batch.numpy(), ref["gb/output"], rtol=0, atol=2e-4)


def test_inference_output_matches_the_authors_graph(ref):
    trainer = reference_trainer(ref)
    expected = ref["inference/output_of_rainy"]
    out = trainer.net.derain_scaled(tf.constant(ref["inputs/rainy"]), training=False).numpy()
    # Without batch statistics the activations grow to about 1e3 (the pre-clip residual reaches 1342),
    # so float32 rounding of the two frameworks' sums differs by up to 1.1e-3 (measured).
    np.testing.assert_allclose(out, expected, rtol=0, atol=5e-3)
    # the library's interface: [0, 1] in and out, the network on [0, 255] inside
    model = trainer.inference_model()
    out01 = model(tf.constant(ref["inputs/rainy"] / 255.0, tf.float32)).numpy()
    assert out01.min() >= 0.0 and out01.max() <= 1.0
    np.testing.assert_allclose(out01 * 255.0, expected, rtol=0, atol=5e-3)


def test_task_losses_match_the_authors_mse_edge_and_texture(ref):
    trainer = reference_trainer(ref)
    losses, _ = trainer.forward(batch(ref), training=True)
    # L_p = tf.losses.mean_squared_error; L_e = MSE of tf.image.sobel_edges maps; L_t = the code's
    # texture term: squared difference of the means of the 48x48 Gram matrices (about 2.7e11 here)
    for task, key in (("p", "gb/mse"), ("e", "gb/edge_loss"), ("t", "gb/content_loss")):
        assert float(losses[task]) == pytest.approx(float(ref[key]), rel=1e-5), task


def test_gb_gradient_norms_match_the_authors(ref):
    trainer = reference_trainer(ref)
    with tf.GradientTape(persistent=True) as tape:
        losses, _ = trainer.forward(batch(ref), training=True)
    norms = trainer.weighting.gradient_norms(losses, tape=tape, shared=trainer.net.shared_kernel)
    got = dict(zip(losses, (float(n) for n in norms)))
    # the authors' G1, G2, G3 = norms of dL_p, dL_t, dL_e at derain/layer5's kernel
    for task, i in (("p", 1), ("t", 2), ("e", 3)):
        assert got[task] == pytest.approx(float(ref[f"gb/G{i}_grad_norm_layer5"]), rel=1e-5), task


@pytest.mark.parametrize("mode", ["gb", "lb"])
def test_authors_arithmetic_total_and_one_adam_step_match(ref, mode):
    """In the authors' float32 arithmetic the texture weight 1 - G2 / (G1 + G2 + G3) (LB: 1 - L_t /
    total) is exactly 0 and the others exactly 1: they optimise L_p + L_e (6429.447 = 555.074 + 5874.374).
    One Adam step (lr 1e-3, TF1's epsilon 1e-8) then moves layer5's kernel as theirs."""
    trainer = reference_trainer(ref, mode)
    variables = trainer.net.trainable_variables
    before = [v.numpy().copy() for v in variables]
    logs = {k: float(v) for k, v in trainer.train_step(batch(ref)).items()}
    assert logs["w_t"] == 0.0 and logs["w_p"] == 1.0 and logs["w_e"] == 1.0
    assert logs["loss"] == pytest.approx(float(ref[f"{mode}/total_loss"]), rel=1e-6)
    assert logs["loss"] == pytest.approx(float(ref["gb/mse"]) + float(ref["gb/edge_loss"]), rel=1e-6)
    # measured: max |diff| 1.5e-8 (Keras' default epsilon 1e-7 would give 2.9e-6)
    np.testing.assert_allclose(trainer.net.layer5.kernel.numpy(), ref[f"{mode}/layer5_kernel_after_one_step"],
                               rtol=0, atol=2e-7)
    update = np.mean(np.concatenate([np.abs(v.numpy() - b).ravel() for v, b in zip(variables, before)]))
    # measured: relative diff 6e-6 (epsilon 1e-7: 2.3e-4)
    assert update == pytest.approx(float(ref[f"{mode}/mean_abs_update_all_trainable"]), rel=5e-5)


def test_stable_arithmetic_keeps_the_texture_weight(ref):
    """``gb_arithmetic="stable"``: w_t = (g_p + g_e) / S (about 1.8e-8, not 0); the total worked by hand
    in float64 from the reference's losses and norms."""
    lp, le, lt = (float(ref[k]) for k in ("gb/mse", "gb/edge_loss", "gb/content_loss"))
    g1, g2, g3 = (float(ref[f"gb/G{i}_grad_norm_layer5"]) for i in (1, 2, 3))  # p, t, e
    s = g1 + g2 + g3
    w = {"p": (g2 + g3) / s, "t": (g1 + g3) / s, "e": (g1 + g2) / s}
    trainer = reference_trainer(ref, "gb", "stable")
    logs = {k: float(v) for k, v in trainer.train_step(batch(ref)).items()}
    assert 0 < logs["w_t"] == pytest.approx(w["t"], rel=1e-5)
    assert w["t"] == pytest.approx(1.7866e-8, rel=1e-4)
    assert logs["w_p"] == pytest.approx(w["p"], rel=1e-6) and logs["w_e"] == pytest.approx(w["e"], rel=1e-6)
    by_hand = w["p"] * lp + w["e"] * le + w["t"] * lt  # = 555.07 + 5874.37 + 4779.2 = 11208.6
    assert logs["loss"] == pytest.approx(by_hand, rel=1e-5)
    assert logs["loss"] > float(ref["gb/total_loss"]) + 4000
    # LB, stable: w_t = (L_p + L_e) / (L_p + L_e + L_t)
    trainer = reference_trainer(ref, "lb", "stable")
    logs = {k: float(v) for k, v in trainer.train_step(batch(ref)).items()}
    total = lp + le + lt
    assert logs["w_t"] == pytest.approx((lp + le) / total, rel=1e-5)
    assert logs["loss"] == pytest.approx((le + lt) / total * lp + (lp + lt) / total * le + (lp + le) / total * lt,
                                         rel=1e-5)


def test_gb_weights_under_mixed_float16_are_finite_and_match_float32(ref):
    """float16 cannot hold the texture gradient (about 4e9, float16's largest is 65504): under
    mixed_float16 the norms and both arithmetics' weights must still be finite and agree with float32."""
    from erl_derain.weighting import TaskWeighting

    results = {}
    try:
        for policy in ("float32", "mixed_float16"):
            keras.mixed_precision.set_global_policy(policy)
            trainer = reference_trainer(ref, "gb")
            shared = trainer.net.shared_kernel

            @tf.function  # (a graph prunes the backward pass to layer5; float16 convolutions are slow on CPU)
            def norms_and_weights(data):
                with tf.GradientTape(persistent=True) as tape:
                    losses, _ = trainer.forward(data, training=True)
                norms = trainer.weighting.gradient_norms(losses, tape=tape, shared=shared)
                return norms, {a: TaskWeighting("gb", arithmetic=a).weights(losses, tape=tape, shared=shared)
                               for a in ("authors", "stable")}

            norms, weights = norms_and_weights(batch(ref))
            results[policy] = ([float(n) for n in norms],
                               {a: {k: float(v) for k, v in w.items()} for a, w in weights.items()})
    finally:
        keras.mixed_precision.set_global_policy("float32")
    (n32, w32), (n16, w16) = results["float32"], results["mixed_float16"]
    assert all(np.isfinite(n16)) and n32[2] > 1e8  # (p, e, t): the texture gradient is far beyond float16
    np.testing.assert_allclose(n16, n32, rtol=1e-3)   # measured: 1e-4 (the forward pass in float16)
    for arithmetic in ("authors", "stable"):
        assert all(np.isfinite(list(w16[arithmetic].values())))
        for t in w32[arithmetic]:
            assert w16[arithmetic][t] == pytest.approx(w32[arithmetic][t], rel=1e-3, abs=1e-12), (arithmetic, t)
    assert w16["authors"] == {"p": 1.0, "e": 1.0, "t": 0.0}
    assert w16["stable"]["t"] == pytest.approx(1.7866e-8, rel=1e-3)


def _flagfile(name: str) -> dict:
    values = {}
    for line in (FLAGS_DIR / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("--"):
            key, _, value = line[2:].partition("=")
            values[key] = value
    return values


@pytest.mark.parametrize("name", ["rain100h_menet_gb.flags", "rain100l_menet_gb.flags",
                                  "rain100h_menet_lb.flags", "rain100l_menet_lb.flags"])
def test_table_flagfiles_reproduce_the_authors_step(ref, name):
    """The flagfiles of Tables I-II use the authors' scale, texture form and arithmetic: built from
    them, the trainer takes the authors' step on the reference batch."""
    flags = _flagfile(name)
    assert flags["menet_value_range"] == "255" and flags["menet_texture_reduction"] == "mean"
    assert flags["menet_gb_arithmetic"] == "authors"
    config = {"method": "menet", "menet_tasks": flags["menet_tasks"].split(","),
              "menet_task_weighting": flags["menet_task_weighting"],
              "menet_texture_reduction": flags["menet_texture_reduction"],
              "menet_value_range": float(flags["menet_value_range"]),
              "menet_gb_arithmetic": flags["menet_gb_arithmetic"], "menet_blocks": int(flags["menet_blocks"]),
              "menet_ca": "menet_ca" in flags, "lr": float(flags["lr"])}
    trainer = menet.trainer_from_config(config)
    trainer.build_networks((2, 64, 64, 3))
    load_reference_weights(trainer.net, ref)
    mode = flags["menet_task_weighting"]
    logs = {k: float(v) for k, v in trainer.train_step(batch(ref)).items()}
    assert logs["loss"] == pytest.approx(float(ref[f"{mode}/total_loss"]), rel=1e-6)
    np.testing.assert_allclose(trainer.net.layer5.kernel.numpy(), ref[f"{mode}/layer5_kernel_after_one_step"],
                               rtol=0, atol=2e-7)
