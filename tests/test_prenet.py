"""PReNet / PRN (Ren et al., CVPR 2019) against independent references: parameter counts worked out by
hand from the paper's layer list, a NumPy forward pass written from the equations (the ConvLSTM step
by hand), scikit-image's SSIM and a SciPy implementation of the authors' zero-padded SSIM, and the
authors' training schedule recomputed from their patch extraction."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from skimage.metrics import structural_similarity

from erl_derain.methods import make_trainer
from erl_derain.methods import prenet as P
from erl_derain.run_config import make_record

FLAGS_DIR = Path(__file__).resolve().parents[1] / "flags" / "prenet"


# -- parameter counts ---------------------------------------------------------------------------------

def conv_params(c_in, c_out):
    return 3 * 3 * c_in * c_out + c_out  # a 3x3 convolution with bias


def hand_count(width=32, blocks=5, recurrent="lstm", recursive=False, inputs=6):
    n = conv_params(inputs, width) + conv_params(width, 3)  # f_in, f_out
    n += (1 if recursive else blocks) * 2 * conv_params(width, width)  # ResBlocks of two convolutions
    if recurrent == "lstm":
        n += 4 * conv_params(2 * width, width)  # i, f, g, o on [features, h]
    elif recurrent == "gru":
        n += 3 * conv_params(2 * width, width)  # z, r on [features, h]; candidate on [r * h, features]
    return n


@pytest.mark.parametrize("settings, expected", [
    ({}, 168_963),                                              # PReNet
    ({"recurrent": "none"}, 95_107),                            # PRN
    ({"recursive_blocks": True}, 94_979),                       # PReNet_r
    ({"recurrent": "none", "recursive_blocks": True}, 21_123),  # PRN_r
    ({"recurrent": "gru"}, 150_499),
    ({"stage_input": "previous"}, 168_099),                     # PReNet_x
])
def test_parameter_counts_at_the_papers_widths(settings, expected):
    cfg = P.PReNetConfig(**settings)
    assert expected == hand_count(recurrent=cfg.recurrent, recursive=cfg.recursive_blocks,
                                  inputs=6 if cfg.stage_input == "both" else 3)
    net = P.PReNet(cfg)
    net(tf.zeros((1, 12, 12, 3)))
    assert net.count_params() == expected
    # T does not change the count: every stage shares the weights.
    net7 = P.PReNet(P.PReNetConfig(**settings, stages=7))
    net7(tf.zeros((1, 12, 12, 3)))
    assert net7.count_params() == expected


# -- the forward pass in NumPy -----------------------------------------------------------------------

def np_conv(x, layer):
    """3x3, stride 1, zero padding 1, cross-correlation with the layer's kernel [3, 3, in, out] + bias."""
    k, b = layer.kernel.numpy().astype(np.float64), layer.bias.numpy().astype(np.float64)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (k.shape[-1],))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + w], k[i, j])
    return out + b


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_lstm_step(x, h, c, gates_layer, width):
    """The ConvLSTM of the paper: gates from [x, h]; c = f c + i g; h = o tanh(c). The fused kernel's
    output blocks are [i | f | g | o]."""
    xh = np.concatenate([x, h], axis=-1)
    k, b = gates_layer.kernel.numpy(), gates_layer.bias.numpy()

    def gate(index):
        part = type("Part", (), {})()
        part.kernel = tf.constant(k[..., index * width:(index + 1) * width])
        part.bias = tf.constant(b[index * width:(index + 1) * width])
        return np_conv(xh, part)

    i, f, g, o = sigmoid(gate(0)), sigmoid(gate(1)), np.tanh(gate(2)), sigmoid(gate(3))
    c = f * c + i * g
    return o * np.tanh(c), c


def np_gru_step(x, h, net, width):
    zr = sigmoid(np_conv(np.concatenate([x, h], -1), net.f_recurrent.update_reset))
    z, r = zr[..., :width], zr[..., width:]
    g = np.tanh(np_conv(np.concatenate([r * h, x], -1), net.f_recurrent.candidate))
    return (1 - z) * h + z * g


def np_forward(net, y):
    """Every stage's output of ``net`` computed in float64 NumPy from its weights."""
    cfg = net.cfg
    y = y.astype(np.float64)
    x = y
    h = c = np.zeros(y.shape[:3] + (cfg.width,))
    outs = []
    for _ in range(cfg.stages):
        f = relu(np_conv(np.concatenate([y, x], -1) if cfg.stage_input == "both" else x, net.f_in))
        if cfg.recurrent == "lstm":
            h, c = np_lstm_step(f, h, c, net.f_recurrent.gates, cfg.width)
            f = h
        elif cfg.recurrent == "gru":
            h = np_gru_step(f, h, net, cfg.width)
            f = h
        blocks = [net.res_blocks[0]] * cfg.blocks if cfg.recursive_blocks else net.res_blocks
        for block in blocks:
            r = np_conv(relu(np_conv(f, block.conv_a)), block.conv_b)
            if cfg.resblock == "authors":
                r = relu(r)
            f = relu(r + f)
        out = np_conv(f, net.f_out)
        x = out + y if cfg.output == "residual" else out
        outs.append(x)
    return outs


@pytest.mark.parametrize("settings", [
    {},
    {"recurrent": "none"},
    {"recurrent": "gru", "resblock": "he"},
    {"recursive_blocks": True, "output": "image", "stage_input": "previous"},
])
def test_forward_matches_numpy_reference(settings):
    cfg = P.PReNetConfig(stages=3, width=4, blocks=2, **settings)
    tf.keras.utils.set_random_seed(1)
    net = P.PReNet(cfg)
    y = np.random.default_rng(0).random((2, 9, 11, 3)).astype(np.float32)
    got = [o.numpy() for o in net.stage_outputs(tf.constant(y))]
    want = np_forward(net, y)
    assert len(got) == 3
    for t, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=f"stage {t + 1}")
    np.testing.assert_allclose(net(y).numpy(), want[-1], atol=2e-5)


def test_convlstm_step_by_hand():
    """One ConvLSTM step on a 1x1 image of 1 channel (3x3 kernels see only their centre), worked out by
    hand: i = sigmoid(a), f = sigmoid(b), g = tanh(c), o = sigmoid(d) of the centre weights."""
    cell = P.ConvLSTM(1)
    x, h, c = (tf.constant([[[[v]]]], tf.float32) for v in (0.5, -0.25, 0.8))
    cell(x, (h, c))
    k = np.zeros((3, 3, 2, 4), np.float32)
    k[1, 1] = [[1.0, -2.0, 0.5, 3.0], [2.0, 1.0, -1.0, 0.5]]  # rows: x, h; columns: i, f, g, o
    cell.gates.kernel.assign(k)
    cell.gates.bias.assign([0.1, 0.2, 0.3, -0.4])
    new_h, (_, new_c) = cell(x, (h, c))
    i = 1 / (1 + math.exp(-(0.5 * 1.0 - 0.25 * 2.0 + 0.1)))
    f = 1 / (1 + math.exp(-(0.5 * -2.0 - 0.25 * 1.0 + 0.2)))
    g = math.tanh(0.5 * 0.5 - 0.25 * -1.0 + 0.3)
    o = 1 / (1 + math.exp(-(0.5 * 3.0 - 0.25 * 0.5 - 0.4)))
    c_want = f * 0.8 + i * g
    assert new_c.numpy().item() == pytest.approx(c_want, abs=1e-6)
    assert new_h.numpy().item() == pytest.approx(o * math.tanh(c_want), abs=1e-6)


def test_pytorch_initialisation_bounds():
    net = P.PReNet(P.PReNetConfig())
    net(tf.zeros((1, 8, 8, 3)))
    for layer, fan_in in ((net.f_in, 6 * 9), (net.f_recurrent.gates, 64 * 9), (net.res_blocks[0].conv_a, 32 * 9),
                          (net.f_out, 32 * 9)):
        bound = 1 / math.sqrt(fan_in)
        k, b = layer.kernel.numpy(), layer.bias.numpy()
        assert np.abs(k).max() <= bound and np.abs(b).max() <= bound
        assert k.std() == pytest.approx(bound / math.sqrt(3), rel=0.15)  # uniform on [-bound, bound]
        assert np.abs(b).max() > 0


# -- the SSIM loss ------------------------------------------------------------------------------------

def random_pair(rng, shape, noise=0.1):
    a = rng.random(shape)
    return a, np.clip(a + noise * rng.standard_normal(shape), 0, 1)


def authors_ssim_numpy(a, b):
    """The authors' SSIM.py in SciPy: 11x11 Gaussian (sigma 1.5), zero padding 5, mean of the map."""
    g = np.exp(-(np.arange(11) - 5) ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    maps = []
    for n in range(a.shape[0]):
        for ch in range(a.shape[-1]):
            x, y = a[n, ..., ch], b[n, ..., ch]

            def f(v):
                return ndimage.correlate(v, w, mode="constant", cval=0.0)
            mx, my = f(x), f(y)
            sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
            maps.append(((2 * mx * my + 1e-4) * (2 * sxy + 9e-4)) / ((mx ** 2 + my ** 2 + 1e-4) * (sxx + syy + 9e-4)))
    return float(np.mean(maps))


@pytest.mark.parametrize("shape", [(2, 40, 37, 3), (1, 100, 100, 3), (3, 16, 23, 3)])
def test_ssim_valid_matches_scikit_image(shape):
    a, b = random_pair(np.random.default_rng(sum(shape)), shape)
    want = np.mean([structural_similarity(a[n], b[n], channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=1.0) for n in range(shape[0])])
    assert P.ssim(a, b, padding="valid").numpy() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("shape", [(2, 40, 37, 3), (1, 100, 100, 3), (3, 16, 23, 3)])
def test_ssim_zeros_matches_the_authors_formula(shape):
    a, b = random_pair(np.random.default_rng(sum(shape) + 1), shape)
    assert P.ssim(a, b).numpy() == pytest.approx(authors_ssim_numpy(a, b), abs=1e-6)


def test_zero_padding_changes_the_ssim_of_a_100x100_patch():
    """The border band of 5 pixels is 19% of a 100x100 patch; zero padding makes both images dark
    there, so it raises the SSIM of a noisy photo patch well above scikit-image's valid mean."""
    from skimage import data

    a = data.astronaut()[None, 100:200, 100:200] / 255.0
    b = np.clip(a + 0.05 * np.random.default_rng(5).standard_normal(a.shape), 0, 1)
    zeros, valid = P.ssim(a, b).numpy(), P.ssim(a, b, padding="valid").numpy()
    assert zeros == pytest.approx(authors_ssim_numpy(a, b), abs=1e-6)
    assert zeros - valid > 0.03


def test_loss_is_negative_ssim_with_recursive_supervision():
    """loss = -sum_t w_t SSIM(x^t, clean): x^t by the NumPy forward pass, SSIM by the SciPy reference."""
    record = make_record("prenet", stages=2, width=4, blocks=1, stage_loss_weights=(0.5, 1.5))
    trainer = make_trainer(record)
    rng = np.random.default_rng(2)
    rainy, clean = random_pair(rng, (2, 20, 20, 3))
    rainy, clean = rainy.astype(np.float32), clean.astype(np.float32)
    logs = trainer.compute_losses(tf.constant(rainy), tf.constant(clean))
    outs = np_forward(trainer.net, rainy)
    want = -(0.5 * authors_ssim_numpy(clean, outs[0]) + 1.5 * authors_ssim_numpy(clean, outs[1]))
    assert logs["loss"].numpy() == pytest.approx(want, abs=1e-5)
    assert logs["ssim"].numpy() == pytest.approx(authors_ssim_numpy(clean, outs[1]), abs=1e-5)
    # The default: the last stage only, weight 1.
    trainer = make_trainer(make_record("prenet", stages=2, width=4, blocks=1))
    loss = trainer.compute_losses(tf.constant(rainy), tf.constant(clean))["loss"].numpy()
    outs = np_forward(trainer.net, rainy)
    assert loss == pytest.approx(-authors_ssim_numpy(clean, outs[1]), abs=1e-5)


def test_first_step_is_pytorch_adam():
    """lr 1e-3 (the method's default); PyTorch's first Adam step is -lr * g / (|g| + 1e-8)."""
    trainer = make_trainer(make_record("prenet", stages=2, width=4, blocks=1))
    rng = np.random.default_rng(3)
    rainy, clean = (v.astype(np.float32) for v in random_pair(rng, (2, 16, 16, 3)))
    trainer.build_networks((2, 16, 16, 3))
    variables = trainer.stage_variables()
    before = [v.numpy() for v in variables]
    with tf.GradientTape() as tape:
        loss = trainer.compute_losses(rainy, clean)["loss"]
    grads = [g.numpy() for g in tape.gradient(loss, variables)]
    trainer.train_step({"rainy": rainy, "clean": clean})
    for v, b, g in zip(variables, before, grads):
        np.testing.assert_allclose(v.numpy() - b, -1e-3 * g / (np.abs(g) + 1e-8), atol=1e-7, err_msg=v.name)


def test_bad_settings_name_the_flag():
    with pytest.raises(ValueError, match="--prenet_stage_loss_weights has 2 value"):
        P.PReNetConfig(stages=6, stage_loss_weights=(0.5, 1.5))
    with pytest.raises(ValueError, match="--prenet_stages"):
        P.PReNetConfig(stages=0)


# -- flagfiles ---------------------------------------------------------------------------------------

def authors_patches(h, w, size=100, stride=80):
    """Patches of one image in the authors' DerainDataset.Im2Patch."""
    return len(range(0, h - size + 1, stride)) * len(range(0, w - size + 1, stride))


def read_flags(path):
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"--(no)?([a-z_0-9]+)(?:=(.*))?$", line.strip())
        if m:
            out[m.group(2)] = m.group(3) if m.group(3) is not None else m.group(1) is None
    return out


def test_flagfiles_follow_the_authors_schedule():
    files = sorted(FLAGS_DIR.glob("*.flags"))
    names = {f.stem for f in files}
    for ds in ("rain100h", "rain100l", "ddn"):
        assert {f"{ds}_{v}" for v in ("prenet", "prn", "prenet_r", "prn_r")} <= names
    # RainTrainH: 1254 pairs of 481x321 (or 321x481), 15 patches at stride 80 -> 18810 = 1045 batches of 18.
    assert authors_patches(321, 481) == authors_patches(481, 321) == 15
    for f in files:
        v = read_flags(f)
        assert v["method"] == "prenet" and v["dataset"] == f.stem.split("_")[0], f
        assert (v["batch_size"], v["crop_size"], float(v["lr"]), float(v["lr_decay_factor"]),
                v["lr_plateau_window"]) == ("18", "100", 1e-3, 0.2, "0"), f
        epochs = float(v["stage_epochs"])
        decay = [float(e) for e in v["lr_decay_epochs"].split(",")]
        assert [d / epochs for d in decay] == [0.3, 0.5, 0.8], f  # 30, 50, 80 of 100 epochs
        if v["dataset"] == "rain100h":
            assert epochs * 1254 / 18 == 100 * 1254 * authors_patches(321, 481) / 18 == 104_500, f
        if v["dataset"] == "rain100l":  # 200 images and their mirrors, 15 patches each
            assert epochs * 200 == 100 * 2 * 200 * authors_patches(321, 481) and v.get("flip") is True, f
        cfg = make_trainer(make_record("prenet", **{k: val for k, val in v.items() if k.startswith("prenet_")})).cfg
        rest = f.stem.split("_", 1)[1]
        if rest in ("prenet", "prn", "prenet_r", "prn_r"):
            assert cfg.recurrent == ("none" if rest.startswith("prn") else "lstm"), f
            assert cfg.recursive_blocks == rest.endswith("_r") and cfg.output == "residual", f
            assert (cfg.stages, cfg.width, cfg.blocks, cfg.loss, cfg.ssim_padding) == (6, 32, 5, "ssim", "zeros"), f


@pytest.mark.parametrize("recurrent", ["lstm", "gru"])
def test_mixed_bfloat16_keeps_the_recurrent_state_in_float32(recurrent):
    """Under mixed_bfloat16 the network (its weights copied from a float32 one) stays within bfloat16's
    precision of the NumPy reference, and the output is float32."""
    import keras

    cfg = P.PReNetConfig(stages=3, width=4, blocks=1, recurrent=recurrent)
    y = np.random.default_rng(4).random((1, 10, 10, 3)).astype(np.float32)
    reference = P.PReNet(cfg)
    reference.build((None, None, None, 3))
    want = np_forward(reference, y)[-1]
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        net = P.PReNet(cfg)
        net.build((None, None, None, 3))
        net.set_weights(reference.get_weights())
        got = net(y)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), want, atol=0.03)
