"""MENET: network shape and structure, BN at test time, one training step of each weighting, CLI."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from erl_derain.inference import apply_padded
from erl_derain.methods import menet

from .conftest import make_folder_dataset, run_settings


def _params(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.weights))


@pytest.mark.parametrize("h,w", [(37, 53), (16, 16), (5, 9)])
def test_output_has_the_input_shape_for_any_size(h, w):
    net = menet.MENET(menet.MENETConfig(blocks=2))
    x = tf.random.uniform((1, h, w, 3), seed=1)
    y = apply_padded(net, x, net.cfg.pad_multiple)
    assert y.shape == (1, h, w, 3)
    assert float(tf.reduce_min(y)) >= 0.0 and float(tf.reduce_max(y)) <= 1.0


def test_channel_attention_adds_exactly_its_parameters():
    plain = menet.MENET(menet.MENETConfig(channel_attention=False))
    with_ca = menet.MENET(menet.MENETConfig(channel_attention=True))
    x = tf.zeros((1, 32, 32, 3))
    plain(x), with_ca(x)
    # CA at width 64, worked by hand (bias-free convs; BN: gamma, beta, moving mean and variance):
    #   squeeze_1, squeeze_2: 1x1 on s2d(2) of 64 channels = 256 -> 64:  2 * 256 * 64   =  32768
    #   layer_1, layer_2, excitation: 3x3, 64 -> 64:                    3 * 9 * 64 * 64 = 110592
    #   five BN of 64 channels:                                         5 * 4 * 64      =   1280
    assert _params(with_ca) - _params(plain) == 32768 + 110592 + 1280
    assert plain.cfg.pad_multiple == 4 and with_ca.cfg.pad_multiple == 16


def test_deep_variant_has_sixteen_blocks_and_no_biases():
    net = menet.MENET(menet.MENETConfig(blocks=16))
    net(tf.zeros((1, 16, 16, 3)))
    assert len(net.res_blocks) == 16 and net.res_blocks[-1].last and not net.res_blocks[0].last
    # 8 more residual blocks = 8 * (2 convs 3x3 64->64 + 2 BN) parameters more than MENET.
    base = menet.MENET(menet.MENETConfig(blocks=8))
    base(tf.zeros((1, 16, 16, 3)))
    assert _params(net) - _params(base) == 8 * (2 * 9 * 64 * 64 + 2 * 4 * 64)
    assert not [v for v in net.weights if "bias" in v.path]


def test_batchnorm_uses_moving_averages_at_test_time():
    net = menet.MENET(menet.MENETConfig(blocks=2))
    a = tf.random.uniform((1, 16, 16, 3), seed=2)
    b = tf.random.uniform((1, 16, 16, 3), seed=3)
    alone = net(a).numpy()
    in_batch = net(tf.concat([a, b], 0)).numpy()[:1]
    np.testing.assert_allclose(alone, in_batch, atol=1e-6)  # per-sample: no batch statistics
    trained = net(tf.concat([a, b], 0), training=True).numpy()[:1]
    assert np.abs(trained - alone).max() > 1e-4  # training mode does use the batch statistics


@pytest.mark.parametrize("mode,tasks", [("gb", ("p", "e", "t")), ("lb", ("p", "e")), ("fixed", ("p", "e"))])
def test_one_training_step_per_weighting(mode, tasks):
    trainer = menet.MENETTrainer(menet.MENETConfig(blocks=2), tasks=tasks, task_weighting=mode,
                                 task_weights=[1.0, 0.01] if mode == "fixed" else None,
                                 texture_reduction="mean")
    trainer.build_networks((2, 32, 32, 3))
    rng = np.random.default_rng(0)
    clean = tf.constant(rng.random((2, 32, 32, 3)), tf.float32)
    rainy = tf.clip_by_value(clean + 0.3 * tf.cast(rng.random((2, 32, 32, 3)) > 0.9, tf.float32), 0, 1)
    before = [v.numpy().copy() for v in trainer.net.trainable_variables]
    step = tf.function(trainer.train_step)
    logs = {k: float(v) for k, v in step({"rainy": rainy, "clean": clean}).items()}
    after = [v.numpy() for v in trainer.net.trainable_variables]
    assert any(np.abs(x - y).max() > 0 for x, y in zip(before, after))
    weights = {t: logs[f"w_{t}"] for t in tasks}
    assert logs["loss"] == pytest.approx(sum(weights[t] * logs[f"l_{t}"] for t in tasks), rel=1e-5)
    if mode == "fixed":
        assert weights == pytest.approx({"p": 1.0, "e": 0.01})
    else:  # GB and LB weights are 1 - share, so they sum to T - 1
        assert sum(weights.values()) == pytest.approx(len(tasks) - 1, rel=1e-5)
    if mode == "lb":
        total = logs["l_p"] + logs["l_e"]
        assert weights["p"] == pytest.approx(1 - logs["l_p"] / total, rel=1e-5)


def test_bad_task_configuration_is_named():
    with pytest.raises(ValueError, match="--menet_tasks"):
        menet.MENETTrainer(menet.MENETConfig(), tasks=("p", "x"))
    with pytest.raises(ValueError, match="--menet_task_weights"):
        menet.MENETTrainer(menet.MENETConfig(), tasks=("p", "e"), task_weighting="fixed", task_weights=[1.0])


def test_cli_trains_with_ten_crops_and_step_decay_then_evaluates(run_cli, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 32))
    model_dir = tmp_path / "run"
    code, out, err = run_cli("train", "--method=menet", f"--model_dir={model_dir}", f"--dataset=folder:{data}",
                             "--menet_blocks=2", "--crop_size=16", "--crop_mode=ten_crop", "--batch_size=4",
                             "--stage_epochs=0.6", "--lr_decay_steps=2", "--menet_task_weighting=lb", "--menet_tasks=p,e",
                             "--jit_compile=false", "--evaluate_after", "--eval_split=test")
    assert code == 0, err
    config = run_settings(model_dir)
    assert config["method"] == "menet" and config["lr"] == pytest.approx(1e-3)  # MENET's default lr
    # 2 images x 10 crops = 20 examples per epoch; 0.6 epoch at batch 4 = 3 steps.
    assert "steps 0->3" in out and "w_p" in out and "Mean over 2 images" in out


def test_value_range_scales_what_the_network_and_the_losses_see():
    """--menet_value_range=255: the network and the task losses work on [0, 255] (the authors' scale),
    the library's images stay in [0, 1]."""
    keras.utils.set_random_seed(3)
    t255 = menet.MENETTrainer(menet.MENETConfig(blocks=2, value_range=255.0), tasks=("p", "e"), task_weighting="lb")
    t255.build_networks((2, 32, 32, 3))
    t1 = menet.MENETTrainer(menet.MENETConfig(blocks=2), tasks=("p", "e"), task_weighting="lb")
    t1.build_networks((2, 32, 32, 3))
    t1.net.set_weights(t255.net.get_weights())
    rng = np.random.default_rng(1)
    data = {"clean": tf.constant(rng.random((2, 32, 32, 3)), tf.float32),
            "rainy": tf.constant(rng.random((2, 32, 32, 3)), tf.float32)}
    out01 = t255.net(data["rainy"]).numpy()
    out255 = t255.net.derain_scaled(data["rainy"] * 255.0).numpy()
    assert 0.0 <= out01.min() and out01.max() <= 1.0 and out255.max() > 1.0
    np.testing.assert_allclose(out01 * 255.0, out255, rtol=1e-5, atol=1e-3)
    # the same weights on [0, 1] give another image: the residual head and BN's epsilon see the scale
    assert np.abs(t1.net(data["rainy"]).numpy() - out01).max() > 0.05
    losses, output = t255.forward(data, training=True)
    mse = np.mean((data["clean"].numpy() * 255.0 - output.numpy()) ** 2)
    assert float(losses["p"]) == pytest.approx(mse, rel=1e-5) and float(losses["p"]) > 100
    # a run saved before the option trained on [0, 1]
    assert menet.config_from_dict({"menet_blocks": 2}).value_range == 1.0
    assert menet.config_from_dict({"menet_value_range": 255}).value_range == 255.0
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="--menet_value_range"):
            menet.config_from_dict({"menet_value_range": bad})


def test_menet_adam_uses_tf1_epsilon_and_gb_arithmetic_is_passed_on():
    trainer = menet.trainer_from_config({"menet_blocks": 2, "tasks": ["p", "e"], "task_weighting": "gb",
                                         "gb_arithmetic": "stable", "lr": 1e-3})
    assert trainer.optimizer_.epsilon == pytest.approx(1e-8)  # TF1 AdamOptimizer's, as the authors' code
    assert trainer.weighting.arithmetic == "stable"
    assert menet.trainer_from_config({"menet_blocks": 2, "lr": 1e-3}).weighting.arithmetic == "authors"
    with pytest.raises(ValueError, match="--menet_gb_arithmetic"):
        menet.trainer_from_config({"menet_blocks": 2, "lr": 1e-3, "gb_arithmetic": "exact"})
    with pytest.raises(ValueError, match="--menet_texture_reduction"):
        menet.trainer_from_config({"menet_blocks": 2, "lr": 1e-3, "texture_reduction": "sum"})


@pytest.mark.parametrize("mode", ["gb", "lb"])
def test_a_non_finite_batch_gives_nan_weights_for_the_nan_guard(mode):
    """GB / LB weights of a step whose losses are not finite are NaN (logged, so the training loop's
    --on_nan guard names them), never the silent equal shares 2/3."""
    trainer = menet.MENETTrainer(menet.MENETConfig(blocks=2), tasks=("p", "e", "t"), task_weighting=mode,
                                 texture_reduction="mean")
    trainer.build_networks((2, 32, 32, 3))
    clean = np.full((2, 32, 32, 3), 0.5, np.float32)
    clean[0, 0, 0, 0] = np.nan
    logs = trainer.train_step({"rainy": tf.constant(np.full((2, 32, 32, 3), 0.5, np.float32)),
                               "clean": tf.constant(clean)})
    assert all(np.isnan(float(logs[f"w_{t}"])) for t in "pet"), {k: float(v) for k, v in logs.items()}
