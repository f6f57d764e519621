"""ERL-Net against the paper's words, checked by hand-worked values: the network as trained so far
(a run stopped early), where the residual encoder is entangled, L_fre summed over MLGD's taps, and the
introduction's clean-to-clean experiment."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from erl_derain import metrics, training
from erl_derain.data import pipelines
from erl_derain.methods import erlnet, make_trainer

from .conftest import TINY_FLAGS, make_folder_dataset

TINY = {"widths": [8, 16], "bottleneck_width": 16, "dense_layers": 2, "growth": 8, "se_ratio": 2}


def _tiny(strategy="ma_d", **kw):
    keras.utils.set_random_seed(0)
    trainer = make_trainer({"method": "erlnet", "erl_strategy": strategy, **TINY, **kw})
    trainer.build_networks((1, 16, 16, 3))
    return trainer


def _leaky(x, slope=0.1):
    return np.where(x > 0, x, slope * x)


@pytest.mark.parametrize("stop_after,stage,uses_ren", [(1, 0, False), (3, 1, True)])
def test_a_run_stopped_early_derains_with_the_network_trained_so_far(tmp_path, stop_after, stage, uses_ren):
    """MA_D stopped in stage I is the MEMD of stage I (MEN -> MDE); once stage II has taken a step it
    runs REN. Before the fix the inference network followed the last stage (REN) whatever was reached."""
    data = make_folder_dataset(tmp_path / "d", n=2, size=(16, 16))
    config = {"method": "erlnet", "erl_strategy": "ma_d", **TINY}
    trainer = make_trainer(config)

    def dataset_fn(start):
        return pipelines.paired_dataset(f"folder:{data}", "train", batch_size=1, crop_size=16, start_index=start)

    model_dir = str(tmp_path / "run")
    summary = training.train(trainer, config, dataset_fn, model_dir=model_dir, stage_steps=[2, 2, 2], batch_size=1,
                             verbose=0, stop_after=stop_after, jit_compile=False)
    assert summary.get("stopped_early")
    loaded, _ = training.load_trainer(model_dir)
    x = tf.random.uniform((1, 16, 16, 3), seed=3)
    out = loaded.inference_network()(x).numpy()  # unclipped: the network itself
    memd = loaded.net.mde(loaded.net.men(x)).numpy()  # the plain encoder-decoder path, composed by hand
    with_ren = loaded.net.mde([m + r for m, r in zip(loaded.net.men(x), loaded.net.ren(x))]).numpy()  # MLGD: every tap
    assert not np.allclose(memd, with_ren, atol=1e-5)
    np.testing.assert_allclose(out, with_ren if uses_ren else memd, atol=1e-5)


@pytest.mark.parametrize("entangle_at", ["post_activation", "pre_activation"])
def test_entanglement_point_worked_by_hand(entangle_at):
    """REN = MEN except that its first level's last 1x1 transition is negated: its first tap before the
    activation is exactly -MEN's (m). Adding before the LeakyReLU(0.1) then gives act(m - m) = 0; adding
    after gives act(m) + act(-m) = 0.9 |m|."""
    trainer = _tiny("ma_d", entanglement="mlgd", erl_entangle_at=entangle_at)
    net = trainer.net
    for src, dst in zip(net.men.weights, net.ren.weights):
        dst.assign(src)
    level1 = net.ren.levels[0].transition
    level1.kernel.assign(-level1.kernel)
    level1.bias.assign(-level1.bias)
    x = tf.random.uniform((1, 16, 16, 3), seed=4)
    tap0 = net.encode(x).entangled[0].numpy()
    post = net.men(x)[0].numpy()
    m = np.where(post > 0, post, post / 0.1)  # MEN's first tap before its LeakyReLU(0.1)
    assert np.abs(m).max() > 0.01
    expected = np.zeros_like(m) if entangle_at == "pre_activation" else 0.9 * np.abs(m)
    np.testing.assert_allclose(tap0, expected, atol=1e-5)


@pytest.mark.parametrize("entanglement,taps", [("mlgd", [0, 1, 2]), ("clgd", [2])])
@pytest.mark.parametrize("entangle_at", ["post_activation", "pre_activation"])
def test_l_fre_sums_every_entangled_tap(entanglement, taps, entangle_at):
    """Eq. 4 with one term per entangled layer (MLGD: both skip levels and the bottleneck). REN's weights
    are all zero (R(x) = 0 at every tap) and the clean autoencoder's encoder is MEN's copy, so
    L_fre = sum over the taps of mean |MEN_i(x_r) - MEN_i(x_c)|, in the space where the branches meet."""
    trainer = _tiny("ma_a", entanglement=entanglement, erl_entangle_at=entangle_at)
    for v in trainer.net.ren.weights:
        v.assign(tf.zeros_like(v))
    for src, dst in zip(trainer.net.men.weights, trainer.clean_ae.men.weights):
        dst.assign(src)
    trainer.set_stage(1)
    rainy = tf.random.uniform((2, 16, 16, 3), seed=5)
    clean = tf.random.uniform((2, 16, 16, 3), seed=6)
    l_fre = float(trainer.compute_losses(rainy, clean)["l_fre"])

    def taps_of(x):
        post = [t.numpy() for t in trainer.net.men(x)]
        return [np.where(p > 0, p, p / 0.1) for p in post] if entangle_at == "pre_activation" else post

    a, b = taps_of(rainy), taps_of(clean)
    expected = sum(np.mean(np.abs(a[i] - b[i])) for i in taps)
    np.testing.assert_allclose(l_fre, expected, rtol=1e-5)
    if entanglement == "mlgd":  # more than the bottleneck term alone
        assert l_fre > np.mean(np.abs(a[2] - b[2])) * 1.01


def test_checkpoints_written_before_the_flag_load_as_post_activation():
    cfg = erlnet.config_from_dict({**TINY})
    assert cfg.entangle_at == "post_activation"
    with pytest.raises(ValueError, match="--erl_entangle_at"):
        erlnet.ERLNetConfig(entangle_at="sideways")


def test_evaluate_scores_the_clean_to_clean_autoencoder_on_clean_inputs(run_cli, tmp_path):
    """The introduction's experiment: the clean autoencoder of stage I, fed the clean test images, next
    to the de-raining network fed the rainy ones, on the same test set."""
    data = make_folder_dataset(tmp_path / "d", n=2, size=(16, 16))
    model_dir = tmp_path / "run"
    code, _, err = run_cli("train", f"--model_dir={model_dir}", f"--dataset=folder:{data}", "--crop_size=16",
                           "--erl_schedule=ma_a", "--stage_steps=2,1", "--noevaluate_after", *TINY_FLAGS)
    assert code == 0, err
    out = tmp_path / "eval"
    code, stdout, err = run_cli("evaluate", f"--model_dir={model_dir}", f"--dataset=folder:{data}", "--split=train",
                                "--network=derain,clean_autoencoder", f"--output={out}")
    assert code == 0, err
    assert "clean_autoencoder   clean" in stdout
    derain = json.loads((out / "derain" / "metrics.json").read_text())
    ae = json.loads((out / "clean_autoencoder" / "metrics.json").read_text())
    assert (derain["network_input"], ae["network_input"]) == ("rainy", "clean")
    assert ae["input_psnr_y_num_inf"] == 2  # its input is the clean image itself
    trainer, _ = training.load_trainer(str(model_dir))
    from erl_derain.data.image_io import load_rgb

    psnrs = []
    for name in ("img0", "img1"):
        clean = load_rgb(str(data / "clean" / f"{name}.png"))
        output = np.clip(trainer.clean_ae(tf.constant(clean[None])).numpy()[0], 0, 1)
        psnrs.append(metrics.evaluate_pair(output, clean)["psnr_y"])
    np.testing.assert_allclose(ae["psnr_y"], np.mean(psnrs), atol=1e-3)
    code, _, err = run_cli("evaluate", f"--model_dir={model_dir}", f"--dataset=folder:{data}", "--network=segmenter")
    assert code == 2 and "--network=segmenter" in err and "clean_autoencoder" in err
