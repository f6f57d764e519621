"""JRGR against numbers the authors' own PyTorch code (guyii54/JRGR) computed: ``jrgr_reference.npz`` (found by
:func:`_reference_path`; the tests skip without it), made for ngf = ndf = 8, 128x128 images, batch 2, seeded,
on CPU. The code's weights are loaded into our seven networks; the
test-time output, the 16 forward intermediates, the BatchNorm running statistics, every loss term and the size
of one full training step must come out as the code's.

The code's names: netG1 = F_s, netG2 = G_r, netG3 = F_r, netG4 = G_s, netD_Ot = D_Or, netD_Os = D_Os,
netD_B = D_B; its tensors are [-1, 1] NCHW: our [0, 1] images are (x + 1) / 2, our rain layers x / 2."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from erl_derain.methods import jrgr

CODE_NAMES = {"f_s": "G1", "f_r": "G3", "g_r": "G2", "g_s": "G4", "d_b": "D_B", "d_os": "D_Os", "d_or": "D_Ot"}
# the reference's configuration: ngf = ndf = 8, unet_128, resnet_9blocks, 3-layer PatchGAN, the code's weights
CONFIG = dict(unet_depth=7, unet_filters=8, resnet_blocks=9, gen_filters=8, gen_norm="batch", disc_filters=8,
              disc_layers=3, crop_size=128, pool_size=50, alpha=4.0, lambda_adv=4.0, lambda_cyc=40.0,
              lambda_mse=40.0, learning_rate=1e-4, beta_1=0.5)
# forward() intermediate -> (our key, kind): images map by (v + 1) / 2, rain layers by v / 2
FORWARD = {
    "pred_Bs": ("b_s", "image"), "pred_Rs": ("r_s", "rain"), "pred_Rst": ("r_s2r", "rain"),
    "pred_Ot": ("o_s2r", "image"), "pred_pred_Bs": ("b_s2r", "image"), "pred_pred_Rt": ("r_s2r_dis", "rain"),
    "pred_pred_Rts": ("r_s2r2s", "rain"), "pred_pred_Os": ("o_s_rec", "image"),
    "pred_Bt": ("b_r", "image"), "pred_Rt": ("r_r", "rain"), "pred_Rts": ("r_r2s", "rain"),
    "pred_Os": ("o_r2s", "image"), "pred_pred_Bt": ("b_r2s", "image"), "pred_pred_Rs": ("r_r2s_dis", "rain"),
    "pred_pred_Rst": ("r_r2s2r", "rain"), "pred_pred_Ot": ("o_r_rec", "image"),
}


def _reference_path() -> Path:
    env = os.environ.get("ERL_DERAIN_SHARED_REFERENCE")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "reference"
    return root / "jrgr_reference.npz"


@pytest.fixture(scope="module")
def ref():
    path = _reference_path()
    if not path.exists():
        pytest.skip(f"the JRGR code's reference numbers are not at {path} (set ERL_DERAIN_SHARED_REFERENCE)")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _image(x):
    """A code tensor (NCHW, [-1, 1]) as our [0, 1] NHWC image."""
    return (np.transpose(x, (0, 2, 3, 1)) + 1.0) / 2.0


def _rain(x):
    return np.transpose(x, (0, 2, 3, 1)) / 2.0


def _inputs(ref):
    return {k: tf.constant(_image(ref[f"inputs/{k}"]), tf.float32) for k in ("O_s", "B_s", "O_t")}


# -- the state_dict -> Keras mapping -----------------------------------------------------------------


class _Loader:
    """Assigns one network's PyTorch state_dict entries to our Keras layers and checks that every
    parameter and buffer is used once and every Keras weight is set. Conv2d weights are [out, in, kh, kw]
    and ConvTranspose2d weights [in, out, kh, kw]: both become Keras' [kh, kw, in, out] / [kh, kw, out, in]
    by the same transpose (2, 3, 1, 0); BatchNorm weight / bias / running_mean / running_var are gamma /
    beta / moving_mean / moving_variance. ``init_statistics``: BatchNorm running statistics as PyTorch
    initialises them (0 and 1) instead of the stored buffers (which the reference holds after forward()'s
    two training-mode calls of each network: the state_dict arrays share memory with the live buffers)."""

    def __init__(self, ref, code_name, net, init_statistics=True):
        self.ref, self.prefix, self.net, self.init_statistics = ref, f"weights/{code_name}/", net, init_statistics
        self.unused = {k for k in ref if k.startswith(self.prefix) and not k.endswith("num_batches_tracked")}
        self.assigned = set()

    def _take(self, name):
        key = self.prefix + name
        assert key in self.unused, f"{key} missing or used twice"
        self.unused.discard(key)
        return self.ref[key]

    def _set(self, variable, value):
        assert tuple(variable.shape) == value.shape, (variable.path, variable.shape, value.shape)
        variable.assign(value)
        self.assigned.add(id(variable))

    def conv(self, layer, name):
        self._set(layer.kernel, np.transpose(self._take(name + ".weight"), (2, 3, 1, 0)))
        if layer.use_bias:
            self._set(layer.bias, self._take(name + ".bias"))

    def bn(self, layer, name):
        self._set(layer.gamma, self._take(name + ".weight"))
        self._set(layer.beta, self._take(name + ".bias"))
        mean, var = self._take(name + ".running_mean"), self._take(name + ".running_var")
        if self.init_statistics:
            mean, var = np.zeros_like(mean), np.ones_like(var)
        self._set(layer.moving_mean, mean)
        self._set(layer.moving_variance, var)

    def done(self):
        assert not self.unused, f"reference entries not mapped: {sorted(self.unused)}"
        missing = [v.path for v in self.net.weights if id(v) not in self.assigned]
        assert not missing, f"Keras weights not set: {missing}"


def unet_names(depth):
    """Our U-Net layer -> the code's recursive UnetSkipConnectionBlock name. The outermost block is
    ``model.model``: 0 = down conv, 1 = the next block, 3 = up conv (bias); a middle block at level i is
    ``model.model.1`` + ``.model.3`` * (i - 1): .model.1 down conv, .2 down norm, .3 the next block,
    .5 up conv, .6 up norm; the innermost: .model.1 down conv, .3 up conv, .4 up norm."""
    names = {"down_0": "model.model.0", "up_0": "model.model.3"}
    for i in range(1, depth):
        p = "model.model.1" + ".model.3" * (i - 1)
        names[f"down_{i}"] = p + ".model.1"
        if i < depth - 1:
            names.update({f"down_norm_{i}": p + ".model.2", f"up_{i}": p + ".model.5", f"up_norm_{i}": p + ".model.6"})
        else:
            names.update({f"up_{i}": p + ".model.3", f"up_norm_{i}": p + ".model.4"})
    return names


def load_unet(ref, code_name, net, **kw):
    loader = _Loader(ref, code_name, net, **kw)
    names = unet_names(net.depth)
    for layer in [*net.downs, *net.ups, net.out_conv]:
        loader.conv(layer, names[layer.name])
    for layer in [*net.down_norms, *net.up_norms]:
        loader.bn(layer, names[layer.name])
    loader.done()


def load_resnet(ref, code_name, net, **kw):
    """ResnetGenerator's Sequential: 0 pad, 1 conv, 2 norm, 3 relu, (4, 5, 6), (7, 8, 9) the downs, 10.. the
    blocks (conv_block.1 / .2 / .5 / .6), then per up ConvTranspose / norm / relu, pad, the 7x7 conv, tanh."""
    loader = _Loader(ref, code_name, net, **kw)
    nb = len(net.blocks)
    loader.conv(net.head, "model.1")
    loader.bn(net.head_norm, "model.2")
    for i in range(2):
        loader.conv(net.downs[i], f"model.{4 + 3 * i}")
        loader.bn(net.down_norms[i], f"model.{5 + 3 * i}")
        loader.conv(net.ups[i], f"model.{10 + nb + 3 * i}")
        loader.bn(net.up_norms[i], f"model.{11 + nb + 3 * i}")
    for i, block in enumerate(net.blocks):
        p = f"model.{10 + i}.conv_block"
        loader.conv(block.conv_a, p + ".1")
        loader.bn(block.norm_a, p + ".2")
        loader.conv(block.conv_b, p + ".5")
        loader.bn(block.norm_b, p + ".6")
    loader.conv(net.tail, f"model.{17 + nb}")
    loader.done()


def load_patchgan(ref, code_name, net, **kw):
    """NLayerDiscriminator: conv 0, then (conv, norm, lrelu) triples at 2, 5, 8, the output conv at 11."""
    loader = _Loader(ref, code_name, net, **kw)
    for n, conv in enumerate(net.convs):
        loader.conv(conv, "model.0" if n == 0 else f"model.{3 * n - 1}")
    loader.conv(net.out_conv, f"model.{3 * net.n_layers + 2}")
    loader.done()


def load_all(ref, trainer, **kw):
    for key, net in trainer.networks().items():
        load = load_unet if key.startswith("f_") else load_resnet if key.startswith("g_") else load_patchgan
        load(ref, CODE_NAMES[key], net, **kw)


def _trainer(ref, strategy="init1", **kw):
    t = jrgr.JRGRTrainer(**{**CONFIG, "strategy": strategy, **kw})
    t.build_networks((2, 128, 128, 3))
    t.set_stage(len(t.stages) - 1)  # the joint stage (for the shared pre-training this copies F_s: load after)
    load_all(ref, t)
    return t


@pytest.fixture(scope="module")
def built(ref):
    return _trainer(ref, strategy="proposed")  # built once (about 6 s): the other tests reload its weights


@pytest.fixture
def loaded(ref, built):
    """The code's networks at their initial state (weights, BatchNorm statistics 0 / 1), empty pools."""
    load_all(ref, built)
    for pool in built.pools.values():
        pool.reset()
    return built


def _code_view(ref, name):
    kind = FORWARD[name][1]
    return (_image if kind == "image" else _rain)(ref[f"forward/{name}"])


# -- tests -------------------------------------------------------------------------------------------------


def test_test_path_and_all_sixteen_intermediates_match_the_code(ref, loaded):
    """F_r in eval mode, then forward() in train mode (batch statistics): the code's values to 1e-5 in our
    [0, 1] scale (the README promises 1e-4). Before the fix G_r / G_s put every transposed-conv output one
    pixel off PyTorch's grid (Keras 'same' padding for ConvTranspose2d(3, 2, padding 1, output_padding 1))."""
    t = loaded
    x = _inputs(ref)
    evaluated = t.inference_model()(x["O_t"]).numpy()
    np.testing.assert_allclose(evaluated, _image(ref["test/F_r_eval_output_of_O_t"]), atol=1e-5)
    out = t.intermediates(x["O_s"], x["O_t"], training=True)
    worst = {}
    for name, (key, _) in FORWARD.items():
        worst[name] = float(np.abs(out[key].numpy() - _code_view(ref, name)).max())
    assert max(worst.values()) < 1e-5, worst


def test_batchnorm_running_statistics_update_as_pytorch(ref, loaded):
    """forward() runs F_r on pred_Ot, then on O_t (and F_s on O_s, then on pred_Os) in training mode; the
    reference holds the buffers after that, from PyTorch's initial (0, 1). PyTorch's running variance takes
    the unbiased batch variance (n / (n - 1)); Keras' the biased one, a factor 8/7 for the 2x2 maps of the
    deepest levels here (batch 2)."""
    t = loaded
    x = _inputs(ref)
    runs = {"G3": (t.f_r, [_code_view(ref, "pred_Ot"), x["O_t"]]),
            "G1": (t.f_s, [x["O_s"], _code_view(ref, "pred_Os")])}
    for code_name, (net, inputs) in runs.items():
        for v in inputs:
            net(tf.constant(v, tf.float32), training=True)
        names = unet_names(net.depth)
        worst = 0.0
        for layer in [*net.down_norms, *net.up_norms]:
            p = f"weights/{code_name}/{names[layer.name]}"
            assert int(ref[p + ".num_batches_tracked"]) == 2
            np.testing.assert_allclose(layer.moving_mean.numpy(), ref[p + ".running_mean"], atol=1e-6)
            diff = np.abs(layer.moving_variance.numpy() - ref[p + ".running_var"]).max()
            worst = max(worst, float(diff))
        assert worst < 1e-6, (code_name, worst)


def test_every_generator_loss_term_and_the_total_match_the_code(ref, loaded):
    """backward_G's terms: the code computes L1 and MSE on [-1, 1] tensors, so on our [0, 1] images a cycle
    term is twice and the MSE four times the [0, 1] value (before the fix: half / a quarter of the code's)."""
    t = loaded
    x = _inputs(ref)
    out = t.intermediates(x["O_s"], x["O_t"], training=True)
    terms = {k: float(v) for k, v in t.generator_losses(out, x["B_s"]).items()}
    g = {k[len("loss_G/"):]: float(v) for k, v in ref.items() if k.startswith("loss_G/")}
    expected = {
        "adv_b": g["GAN_pred_Bs"] + g["GAN_pred_pred_Bs"] + g["GAN_pred_Bt"] + g["GAN_pred_pred_Bt"],
        "adv_or": g["GAN_Ot"], "adv_os": g["GAN_Os"],
        "cyc_os": g["Cycle_Os"], "cyc_or": g["Cycle_Ot"], "cyc_bs": g["Cycle_Bs"], "cyc_br": g["Cycle_Bt"],
        "mse": g["loss_MSE"],
    }
    for k, v in expected.items():
        assert terms[k] == pytest.approx(v, rel=1e-4), (k, terms[k], v)
    assert sum(terms[k] for k in ("cyc_os", "cyc_or", "cyc_bs", "cyc_br")) == pytest.approx(g["loss_Cycle"], rel=1e-4)
    assert terms["adv_b"] + terms["adv_or"] + terms["adv_os"] == pytest.approx(g["loss_GAN"], rel=1e-4)
    # the four D_B terms one by one, and the two MSE terms
    for key, name in (("b_s", "GAN_pred_Bs"), ("b_s2r", "GAN_pred_pred_Bs"), ("b_r", "GAN_pred_Bt"),
                      ("b_r2s", "GAN_pred_pred_Bt")):
        assert float(jrgr.lsgan(t.d_b(out[key]), 1.0)) == pytest.approx(g[name], rel=1e-4), name
    assert float(jrgr.mse(out["b_s"], x["B_s"])) == pytest.approx(g["MSE_pred_Bs"], rel=1e-4)
    assert float(jrgr.mse(out["b_s2r"], x["B_s"])) == pytest.approx(g["MSE_pred_pred_Bs"], rel=1e-4)
    assert float(t.generator_total(t.generator_losses(out, x["B_s"]))) == pytest.approx(g["loss_G_total"], rel=1e-4)


def test_pretraining_loss_is_the_codes_unetderain_mse(ref, loaded):
    """The code pre-trains with its unetderain model: MSELoss(U-Net(O_s), B_s) on [-1, 1] tensors, train
    mode, lambda_regression 1: for F_s's initial weights that is backward_G's MSE_pred_Bs (before the fix
    a quarter of it: the [0, 1] MSE)."""
    t = loaded
    x = _inputs(ref)
    t.set_stage(0)
    try:
        logs = t.pretrain_step({"rainy": x["O_s"], "clean": x["B_s"]})
    finally:
        t.set_stage(1)
    assert set(logs) == {"loss", "mse_f_s"}
    assert float(logs["mse_f_s"]) == pytest.approx(float(ref["loss_G/MSE_pred_Bs"]), rel=1e-4)
    assert float(logs["loss"]) == pytest.approx(float(ref["loss_G/MSE_pred_Bs"]), rel=1e-4)


def test_discriminator_losses_match_the_code_with_its_pool_draws(ref, loaded):
    """The first step's D losses. Fresh pools return the current fakes; D_B's real images are four draws,
    each ONE clean background of the pool (the code drew batch indices [1, 1, 0, 1] of B_s). Our pool's
    own draws must be single stored images; with the code's draws the three losses are the code's."""
    t = loaded
    x = _inputs(ref)
    out = t.intermediates(x["O_s"], x["O_t"], training=True)
    fakes = t.pooled_fakes(out, x["B_s"], tf.constant(0, tf.int64))
    for k in ("b_s", "b_s2r", "b_r", "b_r2s", "o_s2r", "o_r2s"):
        np.testing.assert_array_equal(fakes[k].numpy(), out[k].numpy())  # fresh pools: the current fakes
    drawn = fakes["clean"].numpy()
    assert drawn.shape == (4, 128, 128, 3)
    clean = x["B_s"].numpy()
    assert all(any(np.array_equal(d, c) for c in clean) for d in drawn)
    fakes["clean"] = tf.gather(x["B_s"], ref["loss_D/D_B_real_indices"])  # the code's draws
    losses = {k: float(v) for k, v in t.discriminator_losses(x["O_s"], x["O_t"], fakes).items()}
    assert losses["d_b"] == pytest.approx(float(ref["loss_D/D_B"]), rel=1e-4)
    assert losses["d_or"] == pytest.approx(float(ref["loss_D/D_Or"]), rel=1e-4)
    assert losses["d_os"] == pytest.approx(float(ref["loss_D/D_Os"]), rel=1e-4)


@pytest.mark.parametrize("init,strategy", [("init0", "init1"), ("init13", "proposed")])
def test_one_training_step_moves_each_network_as_the_code(ref, init, strategy):
    """Mean |weight change| of each network after one full step (generator update, then the three
    discriminators), without pre-training (the code's init_derain 0: every network at lr = our init1) and
    with both removal nets pre-trained (1,3: F_s at lr/100, F_r at lr/10 = our proposed). Adam's first
    step moves a weight by lr * |g| / (|g| + eps): PyTorch's eps placement (1e-8 on the bias-corrected
    sqrt(v)) gives the code's sizes to 1e-4 here; Keras' (1e-7 on the raw sqrt(v)) 0.3 % less."""
    t = _trainer(ref, strategy=strategy)
    x = _inputs(ref)
    before = {k: [v.numpy().copy() for v in net.trainable_weights] for k, net in t.networks().items()}
    t.train_step({"rainy": x["O_s"], "clean": x["B_s"], "real": x["O_t"]})
    ratios = {}
    for k, net in t.networks().items():
        moved = np.concatenate([np.abs(v.numpy() - b).ravel() for v, b in zip(net.trainable_weights, before[k])])
        ratios[k] = float(moved.mean()) / float(ref[f"lr_step/{init}/{CODE_NAMES[k]}_mean_abs_update"])
    assert all(abs(r - 1.0) < 1e-3 for r in ratios.values()), ratios


def test_the_trainers_adam_is_pytorchs():
    """Hand-worked: a constant gradient g gives m_hat = g and v_hat = g^2 at every step, so PyTorch's Adam
    moves the weight by lr * g / (g + 1e-8) per step (0.990099 lr for g = 1e-6). Keras' default Adam would
    move it by lr * g / (g + 1e-7 / sqrt(1 - 0.999^t)) (0.240 lr on the first step)."""
    t = jrgr.JRGRTrainer(unet_depth=2, unet_filters=2, resnet_blocks=0, gen_filters=2, disc_filters=2, disc_layers=1)
    optimizer_class = type(t.optimizers_by_name["gen"])
    opt = optimizer_class(1e-3, beta_1=0.5, beta_2=0.999)
    w = keras.Variable(np.zeros(3, np.float32))
    opt.build([w])
    g = tf.constant([1e-6, 1e-4, -2.0])
    previous = np.zeros(3)
    for _ in range(3):
        opt.apply([g], [w])
        step = w.numpy() - previous
        previous = w.numpy().copy()
        expected = -1e-3 * g.numpy() / (np.abs(g.numpy()) + 1e-8)
        np.testing.assert_allclose(step, expected, rtol=2e-5)
