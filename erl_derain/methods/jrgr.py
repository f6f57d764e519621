"""JRGR: Ye, Chang, Zhou & Yan, "Closing the Loop: Joint Rain Generation and Removal via Disentangled
Image Translation" (CVPR 2021), with the open details taken from the authors' PyTorch code (guyii54/JRGR:
``models/raincycle_model.py``, ``models/networks.py``, ``models/unetderain_model.py``,
``util/image_pool.py``, ``options/*.py``, ``train.py``), read and re-written here. The tests check this
module against numbers that code computed (the forward intermediates, every loss term, one optimizer step).

Networks (JRGR (CVPR 2021) Sec. 3.3 names the architectures; the sizes are the code's):

* removal nets F_s (synthetic) and F_r (real): pix2pix U-Nets (``unet_128``: 7 down steps of 4x4
  stride-2 convolutions, 64 base filters doubling up to 8x, BatchNorm, LeakyReLU(0.2) down / ReLU up,
  skip concatenations, tanh out). ``depth`` and ``filters`` are arguments; ``pad_multiple = 2**depth``.
* generation nets G_r (synthetic rain layer -> real rain layer) and G_s (real -> synthetic): CycleGAN
  ResNet generators (reflect-padded 7x7 conv, two stride-2 downs, ``blocks`` residual blocks (9), two
  transposed-conv ups, 7x7 conv, tanh; the paper's Sec. 3.3 says U-Net, the code uses this ResNet).
  The authors call ``define_G`` without ``norm``: BatchNorm (``gen_norm="batch"``; ``"instance"`` is
  offered). The ups are PyTorch's ``ConvTranspose2d(3, stride 2, padding 1, output_padding 1)``: the
  full ("valid") transposed convolution without its first row and column (Keras' "same" puts the
  output grid one pixel off).
* discriminators D_B (backgrounds), D_Os (synthetic rainy), D_Or (real rainy): PatchGAN (``n_layers``
  3, 64 filters, InstanceNorm without affine = ``GroupNormalization(groups=-1)``, LSGAN: no sigmoid).
* BatchNorm is PyTorch's ``BatchNorm2d``: momentum 0.1, eps 1e-5, normalisation by the biased batch
  variance, the running variance updated with the unbiased one (Keras' layer uses the biased one; this
  matters for test-time F_r after training with small feature maps); Adam is PyTorch's (eps 1e-8 added
  to the bias-corrected sqrt(v)), see :class:`TorchAdam`.

Value ranges: the library's images are [0, 1]; the authors' tensors are [-1, 1]. Every network here
takes and returns [0, 1]-space tensors and converts inside (x -> 2x - 1 in, (tanh + 1) / 2 out for
F; a rain layer R -> 2R in, tanh / 2 out for G; x -> 2x - 1 into D), so every intermediate equals the
authors' one mapped by v -> (v + 1) / 2 (images) or v -> v / 2 (rain layers). The losses are computed
in the authors' [-1, 1] scale (L1 there is twice, MSE four times the [0, 1] value), so the loss weights
mean what they mean in the paper and the code. Backgrounds F(O) lie in [0, 1]; generated rainy images
B + G(R) are not clipped during training (as the authors'), only the inference model clips.

The two closed loops (Fig. 2; names of :meth:`JRGRTrainer.synthetic_loop` / ``real_loop`` outputs,
with the panels of Fig. 6 and the authors' names):

    synthetic O_s: b_s = F_s(O_s) (g; pred_Bs), r_s = O_s - b_s (pred_Rs),
                   o_s2r = b_s + G_r(r_s) (h: generated real; pred_Ot), b_s2r = F_r(o_s2r) (i; pred_pred_Bs),
                   o_s_rec = b_s2r + G_s(o_s2r - b_s2r) (j; pred_pred_Os)
    real O_r:      b_r = F_r(O_r) (b; pred_Bt), r_r = O_r - b_r (pred_Rt),
                   o_r2s = b_r + G_s(r_r) (c: generated synthetic; pred_Os), b_r2s = F_s(o_r2s) (d; pred_pred_Bt),
                   o_r_rec = b_r2s + G_r(o_r2s - b_r2s) (e; pred_pred_Ot)

Losses (JRGR (CVPR 2021) Sec. 3.2, Eq. 2-8, in the LSGAN form of the code: ls(x, t) = mean((x - t)^2);
L1 and MSE are means over elements of [-1, 1] tensors, as PyTorch's L1Loss / MSELoss in the code):

* generators: adv_b = sum over the four backgrounds (b_s, b_s2r, b_r, b_r2s) of ls(D_B(b), 1);
  adv_or = ls(D_Or(o_s2r), 1); adv_os = ls(D_Os(o_r2s), 1); cyc_os = L1(O_s, o_s_rec),
  cyc_or = L1(O_r, o_r_rec), cyc_bs = L1(b_s, b_s2r), cyc_br = L1(b_r, b_r2s);
  mse = MSE(b_s, B) + MSE(b_s2r, B);
  total = lambda_adv_b * adv_b + lambda_adv_o * (adv_os + adv_or) + lambda_cyc * sum(cyc) + lambda_mse * mse
  (lambda_adv_b = lambda_adv_o = lambda_adv unless given: Table 2's "w/o L_adv^B" / "w/o L_adv^O").
* discriminators (Eq. 3, 4): d_b = sum over k = 1..4 of 0.5 * (alpha / 4 * ls(D_B(B_k), 1) + ls(D_B(f_k), 0)),
  f_k the pooled batches of b_s, b_s2r, b_r, b_r2s and B_k four independent draws, each ONE clean
  background chosen uniformly among those stored in the pool of clean inputs (Sec. 3.2: "B is randomly
  chosen in the former inputs"; the code's ``Pool_real_B.query(Bs)`` then ``query(return_num=4)``).
  alpha weighs the real term against the four fake ones as in Eq. 3; alpha = 4 is exactly the code's
  loss (four (real, fake) pairs, each halved). d_or = 0.5 * (ls(D_Or(O_r), 1) + ls(D_Or(pool(o_s2r)), 0));
  d_os likewise with O_s and o_r2s. A discriminator is not updated at all when its adversarial weight is 0.

Image pools (CycleGAN's, size 50): one per fake input of a discriminator plus one of clean
backgrounds (seven, as the authors'). They live in ``tf.Variable``s and draw stateless random numbers
keyed on (seed, pool, step counter, batch index), so ``train_step`` works inside ``tf.function``.
Pools are not checkpointed (a resumed run refills them, as the authors' code; 7 x 50 crops of 256^2
would add 275 MB per checkpoint); the step counter is. Non-finite images are never stored.

Training (JRGR (CVPR 2021) Sec. 3.3, Sec. 4.4 / Table 2; the code's README and ``train.py``):

* ``proposed``: stage "pretrain" trains the removal net on synthetic pairs with MSE, then stage "joint"
  trains all seven networks. ``pretrain="shared"`` (default; the code's README recipe that produced the
  published models: its ``unetderain`` model trains ONE U-Net, loaded into both F_s and F_r with
  ``--init_derain 1,3``): F_s is pre-trained and copied (weights and BatchNorm statistics) into F_r when
  the joint stage starts. ``pretrain="separate"``: F_s and F_r are pre-trained side by side from their
  own initialisations (the paper's wording "pre-train the synthetic removal sub-network and real removal
  sub-network").
* ``init2``: F_s only is pre-trained; ``init1``: no pre-training.
* joint-stage learning rates: generation nets and discriminators at ``lr``; a removal net is cut only
  when it was pre-trained (the code's rule for ``init_derain``): F_s at lr/100 (proposed, init2), F_r at
  lr/10 (proposed); otherwise at ``lr`` (init1 trains all at the base rate). Adam(beta_1 0.5, 0.999), one
  optimizer per group; the generator update comes first, then the discriminators' on the same
  (detached, pooled) fakes (:meth:`JRGRTrainer.generator_step`, :meth:`JRGRTrainer.discriminator_step`).
  The lr of F_r, F_s and the discriminators follows the generation nets' optimizer
  (``current_optimizer``, which the training loop's schedules drive), keeping the ratios.

Test: F_r only (``inference_model``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from erl_derain import losses as losses_lib
from erl_derain.config import option
from erl_derain.methods import MethodError, MethodSpec, StreamSpec, VerbSpec, register
from erl_derain.methods import base as method_base
from erl_derain.distribute import as_float32, for_gradients

STRATEGIES = ("proposed", "init2", "init1")
PRETRAIN_MODES = ("shared", "separate")
NETWORKS = ("f_s", "f_r", "g_r", "g_s", "d_b", "d_os", "d_or")
GEN_NORMS = ("batch", "instance")
D_B_REAL_DRAWS = 4  # clean backgrounds drawn from the pool per D_B update (one per fake background)

STATIC_LOSS_SCALE = 1024.0  # JRGR under mixed_float16 (see JRGRTrainer.__init__)
# The seven image pools (fake inputs of the discriminators and the clean backgrounds).
POOLS = ("b_s", "b_s2r", "b_r", "b_r2s", "clean", "o_s2r", "o_r2s")


def _init():
    return keras.initializers.RandomNormal(0.0, 0.02)  # the authors' init_type "normal", gain 0.02


class TorchBatchNorm(layers.BatchNormalization):
    """PyTorch's ``BatchNorm2d`` (momentum 0.1 = Keras 0.9, eps 1e-5): in training the batch is
    normalised with the biased batch variance (as Keras does), but the running variance is updated
    with the unbiased one, ``var * n / (n - 1)`` for ``n`` values per channel (Keras uses the biased
    one). Only the test-time (moving-statistics) path differs; it does for small maps: n = 16 for the
    4x4 level of a U-Net at 256^2, batch 1 (the code's setting), a factor 1.067."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = keras.ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(x, None)
        n = keras.ops.cast(keras.ops.size(x) // keras.ops.shape(x)[self.axis], x.dtype)
        context = tf.distribute.get_replica_context()
        if self.synchronized and context is not None:  # (--sync_batchnorm) the global batch's count
            n = n * context.num_replicas_in_sync
        unbiased = variance * n / keras.ops.maximum(n - 1.0, 1.0)
        m = self.momentum
        self.moving_mean.assign(keras.ops.cast(self.moving_mean, x.dtype) * m + mean * (1.0 - m))
        self.moving_variance.assign(keras.ops.cast(self.moving_variance, x.dtype) * m + unbiased * (1.0 - m))
        out = keras.ops.batch_normalization(
            x, mean, variance, axis=self.axis, epsilon=self.epsilon,
            offset=keras.ops.cast(self.beta, x.dtype) if self.center else None,
            scale=keras.ops.cast(self.gamma, x.dtype) if self.scale else None)
        return keras.ops.cast(out, self.compute_dtype)


class TorchAdam(keras.optimizers.Adam):
    """``torch.optim.Adam`` (the authors' optimizer): eps (1e-8, PyTorch's default) is added to the
    bias-corrected ``sqrt(v_hat)``: ``w -= lr * m_hat / (sqrt(v_hat) + eps)``. Keras' Adam adds its eps
    (default 1e-7) to the uncorrected ``sqrt(v)``, which is an eps of ``eps / sqrt(1 - beta_2^t)``
    in PyTorch's form (3.2e-6 on the first step): weights with gradients below about 1e-5 would move
    visibly less than PyTorch moves them. Same variables as Keras' Adam (checkpoints are compatible)."""

    def __init__(self, learning_rate=1e-4, *, epsilon: float = 1e-8, **kwargs):
        super().__init__(learning_rate, epsilon=epsilon, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        ops = keras.ops
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        bias_1 = 1 - ops.power(ops.cast(self.beta_1, variable.dtype), local_step)
        bias_2 = 1 - ops.power(ops.cast(self.beta_2, variable.dtype), local_step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        denominator = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(bias_2)), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(m, lr / bias_1), denominator))


def _bn(name):
    # gamma ~ N(1, 0.02) as the authors' init_weights
    return TorchBatchNorm(momentum=0.9, epsilon=1e-5, gamma_initializer=keras.initializers.RandomNormal(1.0, 0.02),
                          name=name)


def _instance_norm(name):
    # PyTorch InstanceNorm2d(affine=False): per-sample, per-channel statistics, no scale/offset.
    return layers.GroupNormalization(groups=-1, center=False, scale=False, epsilon=1e-5, name=name)


def _norm(kind, name):
    return _bn(name) if kind == "batch" else _instance_norm(name)


# ------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------


class UNetRemoval(keras.Model):
    """Rain removal sub-network F (pix2pix ``UnetGenerator``): rainy [0, 1] -> background [0, 1].

    ``depth`` down steps (7 = ``unet_128``, sides must be multiples of ``2**depth``), level ``i`` has
    ``filters * min(2**i, 8)`` channels; BatchNorm everywhere except the outermost down conv and the
    innermost down conv; the output is (tanh + 1) / 2. (The code's in-place LeakyReLU also rewrites the
    tensor its skip concatenates, but that concatenation only feeds a ReLU and relu(lrelu(x)) = relu(x):
    no difference, forward or backward.)"""

    def __init__(self, depth: int = 7, filters: int = 64, **kwargs):
        super().__init__(**kwargs)
        if depth < 2:
            raise ValueError(f"--unet_depth must be >= 2, got {depth}")
        self.depth, self.filters = int(depth), int(filters)
        widths = [self.filters * min(2 ** i, 8) for i in range(self.depth)]
        self.downs = [layers.Conv2D(w, 4, strides=2, padding="same", use_bias=False, kernel_initializer=_init(),
                                    name=f"down_{i}") for i, w in enumerate(widths)]
        # level 0 and the innermost level have no norm on the way down
        self.down_norms = [_bn(f"down_norm_{i}") for i in range(1, self.depth - 1)]  # levels 1..depth-2
        self.ups = [layers.Conv2DTranspose(widths[i - 1], 4, strides=2, padding="same", use_bias=False,
                                           kernel_initializer=_init(), name=f"up_{i}")
                    for i in range(1, self.depth)]
        self.up_norms = [_bn(f"up_norm_{i}") for i in range(1, self.depth)]
        self.out_conv = layers.Conv2DTranspose(3, 4, strides=2, padding="same", use_bias=True,
                                               kernel_initializer=_init(), name="up_0")

    def call(self, x, training=False):
        h = 2.0 * x - 1.0
        skips = []
        for i, conv in enumerate(self.downs):
            if i > 0:
                h = tf.nn.leaky_relu(h, 0.2)
            h = conv(h)
            if 0 < i < self.depth - 1:
                h = self.down_norms[i - 1](h, training=training)
            skips.append(h)
        u = skips[-1]
        for i in range(self.depth - 1, 0, -1):
            u = self.up_norms[i - 1](self.ups[i - 1](tf.nn.relu(u)), training=training)
            u = tf.concat([skips[i - 1], u], axis=-1)
        out = tf.tanh(self.out_conv(tf.nn.relu(u)))
        return as_float32((out + 1.0) * 0.5)


def _reflect(x, p):
    return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")


class _ResnetBlock(layers.Layer):
    def __init__(self, width, norm, **kwargs):
        super().__init__(**kwargs)
        bias = norm == "instance"
        self.conv_a = layers.Conv2D(width, 3, use_bias=bias, kernel_initializer=_init(), name="conv_a")
        self.norm_a = _norm(norm, "norm_a")
        self.conv_b = layers.Conv2D(width, 3, use_bias=bias, kernel_initializer=_init(), name="conv_b")
        self.norm_b = _norm(norm, "norm_b")

    def call(self, x, training=False):
        y = tf.nn.relu(self.norm_a(self.conv_a(_reflect(x, 1)), training=training))
        y = self.norm_b(self.conv_b(_reflect(y, 1)), training=training)
        return x + y


class ResnetRainGenerator(keras.Model):
    """Rain generation sub-network G (CycleGAN ``ResnetGenerator``) on rain layers: a rain layer R
    (values in [-1, 1], the difference of two [0, 1] images) -> a translated rain layer in
    [-0.5, 0.5] (the authors' tanh output in their [-1, 1] image scale). Sides: multiples of 4."""

    def __init__(self, blocks: int = 9, filters: int = 64, norm: str = "batch", **kwargs):
        super().__init__(**kwargs)
        if norm not in GEN_NORMS:
            raise ValueError(f"--gen_norm must be one of {GEN_NORMS}, got {norm!r}")
        bias = norm == "instance"
        f = int(filters)
        self.head = layers.Conv2D(f, 7, use_bias=bias, kernel_initializer=_init(), name="head")
        self.head_norm = _norm(norm, "head_norm")
        self.downs = [layers.Conv2D(f * 2 ** (i + 1), 3, strides=2, use_bias=bias, kernel_initializer=_init(),
                                    name=f"down_{i}") for i in range(2)]
        self.down_norms = [_norm(norm, f"down_norm_{i}") for i in range(2)]
        self.blocks = [_ResnetBlock(f * 4, norm, name=f"block_{i}") for i in range(int(blocks))]
        # PyTorch ConvTranspose2d(3, stride 2, padding 1, output_padding 1): output pixel o = 2 i + k - 1,
        # i.e. the full ("valid", 2n + 1) transposed convolution from its second row/column on (see call)
        self.ups = [layers.Conv2DTranspose(f * 2 ** (1 - i), 3, strides=2, padding="valid", use_bias=bias,
                                           kernel_initializer=_init(), name=f"up_{i}") for i in range(2)]
        self.up_norms = [_norm(norm, f"up_norm_{i}") for i in range(2)]
        self.tail = layers.Conv2D(3, 7, use_bias=True, kernel_initializer=_init(), name="tail")

    def call(self, rain, training=False):
        h = tf.nn.relu(self.head_norm(self.head(_reflect(2.0 * rain, 3)), training=training))
        for conv, norm in zip(self.downs, self.down_norms):
            h = tf.pad(h, [[0, 0], [1, 1], [1, 1], [0, 0]])  # PyTorch padding=1
            h = tf.nn.relu(norm(conv(h), training=training))
        for block in self.blocks:
            h = block(h, training=training)
        for conv, norm in zip(self.ups, self.up_norms):
            h = tf.nn.relu(norm(conv(h)[:, 1:, 1:, :], training=training))
        return as_float32(0.5 * tf.tanh(self.tail(_reflect(h, 3))))


class PatchDiscriminator(keras.Model):
    """PatchGAN (pix2pix ``NLayerDiscriminator``): [0, 1] image -> per-patch scores (no sigmoid:
    LSGAN). 4x4 convs with PyTorch's padding 1: a 256^2 input gives 30x30 scores for n_layers=3."""

    def __init__(self, n_layers: int = 3, filters: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.n_layers = int(n_layers)
        f = int(filters)
        self.convs = [layers.Conv2D(f, 4, strides=2, kernel_initializer=_init(), name="conv_0")]
        self.norms = []
        for n in range(1, self.n_layers + 1):
            stride = 2 if n < self.n_layers else 1
            self.convs.append(layers.Conv2D(f * min(2 ** n, 8), 4, strides=stride, kernel_initializer=_init(),
                                            name=f"conv_{n}"))
            self.norms.append(_instance_norm(f"norm_{n}"))
        self.out_conv = layers.Conv2D(1, 4, strides=1, kernel_initializer=_init(), name="conv_out")

    def call(self, x, training=False):
        h = 2.0 * x - 1.0
        for i, conv in enumerate(self.convs):
            h = conv(tf.pad(h, [[0, 0], [1, 1], [1, 1], [0, 0]]))
            if i > 0:
                h = self.norms[i - 1](h)
            h = tf.nn.leaky_relu(h, 0.2)
        return as_float32(self.out_conv(tf.pad(h, [[0, 0], [1, 1], [1, 1], [0, 0]])))


class _ClippedRemoval(keras.Model):
    """The test-time network: F_r with BN moving averages, clipped to [0, 1]."""

    def __init__(self, net, **kwargs):
        super().__init__(**kwargs)
        self.net = net

    def call(self, x):
        return tf.clip_by_value(self.net(x, training=False), 0.0, 1.0)


# ------------------------------------------------------------------------------------------------
# Image pool
# ------------------------------------------------------------------------------------------------


class ImagePool(tf.Module):
    """CycleGAN's history of images (guyii54/JRGR ``util/image_pool.py``), graph-friendly.

    ``query(images, step)``: per example of the batch, while fewer than ``size`` images are stored the
    example is stored and returned; once full, with probability 0.5 a stored image (uniformly chosen)
    is returned and replaced by the example, else the example itself is returned. ``sample(n, step)``:
    ``n`` independent draws, each ONE stored image chosen uniformly among the images stored so far
    (the code's ``query(return_num=n)``: ``random.randint(0, num_imgs - 1)`` per draw).
    Random numbers are stateless, keyed on (seed, stream, step, batch index): the same step gives the
    same draws. Non-finite images are returned but never stored (a skipped step cannot poison the
    pool). ``size = 0`` disables the pool (``query`` returns its input, ``sample`` draws from the
    ``images`` it is given). Under a tf.distribute strategy every replica keeps a pool of its own (as
    each process of a multi-GPU PyTorch run does; ON_READ variables), and its draws are keyed on the
    replica too."""

    def __init__(self, size: int, image_shape, *, seed: int = 0, stream: int = 0, name: str = "pool"):
        super().__init__(name=name)
        self.size = int(size)
        self.seed, self.stream = int(seed), int(stream)
        shape = [max(self.size, 1), *[int(s) for s in image_shape]]
        local = dict(synchronization=tf.VariableSynchronization.ON_READ,
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.images = tf.Variable(tf.zeros(shape, tf.float32), trainable=False, name="images", **local)
        self.count = tf.Variable(0, dtype=tf.int32, trainable=False, name="count", **local)

    def reset(self):
        self.count.assign(0)

    @staticmethod
    def _replica_step(step):
        ctx = tf.distribute.get_replica_context()
        replicas, replica = (1, 0) if ctx is None else (ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group)
        return tf.cast(step, tf.int64) * replicas + tf.cast(replica, tf.int64)

    def query(self, images, step):
        if self.size <= 0:
            return images
        images = tf.convert_to_tensor(images, tf.float32)
        batch = images.shape[0]
        if batch is None:
            raise ValueError("ImagePool.query needs a static batch size (batch with drop_remainder=True)")
        step = self._replica_step(step)
        out = []
        for i in range(batch):
            image = images[i]
            key = tf.stack([tf.constant(self.seed * 64 + self.stream, tf.int64), step * batch + i])
            u = tf.random.stateless_uniform([2], seed=key)
            count = self.count.read_value()
            filling = count < self.size
            finite = tf.reduce_all(tf.math.is_finite(image))
            use_stored = tf.logical_and(tf.logical_not(filling), u[0] > 0.5)
            pick = tf.minimum(tf.cast(u[1] * self.size, tf.int32), self.size - 1)
            index = tf.where(filling, count, pick)
            stored = self.images[index]  # read before the write
            do_write = tf.logical_and(finite, tf.logical_or(filling, use_stored))
            new = tf.where(do_write, image, stored)
            if isinstance(self.images, tf.distribute.DistributedValues):  # this replica's copy, rewritten
                self.images.assign(tf.tensor_scatter_nd_update(self.images.read_value(), [[index]], [new]))
            else:
                self.images.scatter_nd_update([[index]], [new])
            self.count.assign(tf.minimum(count + tf.cast(tf.logical_and(filling, finite), tf.int32), self.size))
            out.append(tf.where(use_stored, stored, image))
        return tf.stack(out)

    def sample(self, n: int, step, images=None):
        """``n`` draws with replacement, each one image chosen uniformly among the ``count`` stored
        (or, for ``size = 0``, among ``images``); [n, H, W, C]. Keyed on a stream of its own, so the
        draws do not repeat ``query``'s random numbers."""
        if self.size <= 0:
            if images is None:
                raise ValueError("ImagePool.sample with size 0 needs the images to draw from")
            return draw_uniformly(images, n, self.seed * 64 + 32 + self.stream, self._replica_step(step))
        count = tf.maximum(self.count.read_value(), 1)
        return draw_uniformly(self.images.read_value(), n, self.seed * 64 + 32 + self.stream,
                              self._replica_step(step), count)


def draw_uniformly(images, n: int, stream: int, step, count=None):
    """``n`` rows of ``images[:count]`` (default: all rows), each chosen uniformly and independently
    (Python's ``random.randint(0, count - 1)`` per draw in the authors' pool); stateless, keyed on
    (stream, step)."""
    images = tf.convert_to_tensor(images, tf.float32)
    count = tf.shape(images)[0] if count is None else tf.cast(count, tf.int32)
    u = tf.random.stateless_uniform([int(n)], seed=tf.stack([tf.constant(stream, tf.int64), tf.cast(step, tf.int64)]))
    index = tf.minimum(tf.cast(u * tf.cast(count, tf.float32), tf.int32), count - 1)
    return tf.gather(images, index)


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------


def lsgan(prediction, target: float):
    """LSGAN: mean((D(x) - target)^2) (PyTorch MSELoss against a constant label)."""
    return tf.reduce_mean(tf.square(prediction - target))


def _code_range(x):
    """A [0, 1] image in the authors' [-1, 1] scale (their ``Normalize(0.5, 0.5)``)."""
    return 2.0 * x - 1.0


def l1(a, b):
    """The code's ``L1Loss`` of two [0, 1] images, on their [-1, 1] versions (twice the [0, 1] value)."""
    return losses_lib.l1(_code_range(a), _code_range(b))


def mse(a, b):
    """The code's ``MSELoss`` of two [0, 1] images, on their [-1, 1] versions (four times the [0, 1] value)."""
    return losses_lib.mse(_code_range(a), _code_range(b))


GENERATOR_TERMS = ("adv_b", "adv_os", "adv_or", "cyc_os", "cyc_or", "cyc_bs", "cyc_br", "mse")
DISCRIMINATOR_TERMS = ("d_b", "d_os", "d_or")


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------


Stage = method_base.Stage


def _check_pretrain(pretrain: str) -> str:
    if pretrain not in PRETRAIN_MODES:
        raise ValueError(f"--jrgr_pretrain must be one of {', '.join(PRETRAIN_MODES)}, got {pretrain!r}")
    return pretrain


def stages_for(strategy: str, pretrain: str = "shared") -> tuple:
    """Table 2's strategies. ``proposed`` with ``pretrain="shared"`` pre-trains F_s only (it is copied
    into F_r when the joint stage starts, see :meth:`JRGRTrainer.set_stage`); ``"separate"`` both."""
    _check_pretrain(pretrain)
    joint = Stage("joint", NETWORKS, optimizer="gen")
    if strategy == "proposed":
        return Stage("pretrain", ("f_s",) if pretrain == "shared" else ("f_s", "f_r"), optimizer="pretrain"), joint
    if strategy == "init2":
        return Stage("pretrain", ("f_s",), optimizer="pretrain"), joint
    if strategy == "init1":
        return (joint,)
    raise ValueError(f"--jrgr_schedule must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


def pretrained_networks(strategy: str) -> tuple:
    """The removal nets that enter the joint stage pre-trained (own pre-training or the shared copy)."""
    return {"proposed": ("f_s", "f_r"), "init2": ("f_s",), "init1": ()}[strategy]


def default_lr_factors(strategy: str) -> dict:
    """The code's rule (``raincycle_model.py``, by ``init_derain``): a removal net's joint-stage lr is
    cut (F_s /100, F_r /10) only when that net was pre-trained; otherwise it trains at the base rate."""
    pre = pretrained_networks(strategy)
    return {"f_s": 0.01 if "f_s" in pre else 1.0, "f_r": 0.1 if "f_r" in pre else 1.0}


PREFIX = "jrgr_"


@dataclass(frozen=True)
class JRGRConfig:
    """JRGR's settings (flags ``--jrgr_<field>``; the old names are accepted)."""
    schedule: str = option("proposed", "Table 2 strategy: pre-train the removal nets (proposed), F_s only (init2) "
                           "or nothing (init1) before the joint stage.", choices=STRATEGIES, aliases=("jrgr_strategy",))
    pretrain: str = option("shared", "--jrgr_schedule=proposed: pre-train one U-Net (F_s) and copy it into F_r when "
                           "the joint stage starts (shared: the authors' code and README) or pre-train F_s and F_r "
                           "side by side (separate; runs made before this setting).", choices=PRETRAIN_MODES,
                           legacy="separate")
    unet_depth: int = option(7, "Down steps of the removal U-Nets (pad multiple 2**depth).", aliases=("unet_depth",))
    unet_filters: int = option(64, "Base filters of the removal U-Nets.", aliases=("unet_filters",))
    resnet_blocks: int = option(9, "Residual blocks of the generation nets.", aliases=("resnet_blocks",))
    gen_filters: int = option(64, "Base filters of the generation nets.", aliases=("gen_filters",))
    gen_norm: str = option("batch", "Normalisation of the generation nets.", choices=GEN_NORMS, aliases=("gen_norm",))
    disc_filters: int = option(64, "Base filters of the PatchGAN discriminators.", aliases=("disc_filters",))
    disc_layers: int = option(3, "PatchGAN layers.", aliases=("disc_layers",))
    alpha: float = option(4.0, "alpha on the real background term of L_adv^B (four draws of alpha/4 each).")
    lambda_adv: float = option(10.0, "Weight of the adversarial losses (0: no discriminator update).",
                               aliases=("lambda_adv",))
    lambda_adv_b: float | None = option(None, "Weight of L_adv^B alone (default --jrgr_lambda_adv; 0: Table 2 w/o "
                                        "L_adv^B).", aliases=("lambda_adv_b",))
    lambda_adv_o: float | None = option(None, "Weight of L_adv^O alone (default --jrgr_lambda_adv; 0: w/o L_adv^O).",
                                        aliases=("lambda_adv_o",))
    lambda_cyc: float = option(1.0, "Weight of the cycle losses (0: w/o L_cyc).", aliases=("lambda_cyc",))
    lambda_mse: float = option(10.0, "Weight of the synthetic MSE (0: w/o L_mse).", aliases=("lambda_mse",))
    pretrain_lr: float | None = option(None, "Learning rate of the pre-training stage (default --lr).",
                                       aliases=("pretrain_lr",))
    fr_lr_factor: float | None = option(None, "F_r's joint-stage learning rate over the generation nets' (default: "
                                        "0.1 when F_r was pre-trained (proposed), else 1: the code's rule).",
                                        aliases=("fr_lr_factor",))
    fs_lr_factor: float | None = option(None, "F_s's joint-stage learning rate over the generation nets' (default: "
                                        "0.01 when F_s was pre-trained (proposed, init2), else 1: the code's rule).",
                                        aliases=("fs_lr_factor",))
    d_lr_factor: float = option(1.0, "The discriminators' learning rate over the generation nets'.")
    beta_1: float = option(0.5, "Adam beta_1.", aliases=("beta_1",))
    pool_size: int = option(50, "Image pool of the discriminators' fake inputs.", aliases=("pool_size",))
    real_dataset: str | None = option(None, "Unpaired real rainy photos: a TFDS name (real_rain) or a folder.",
                                      aliases=("real_dataset",))
    real_split: str = option("train", "Split of --jrgr_real_dataset.", aliases=("real_split",))
    real_manual_dir: str | None = option(None, "manual_dir of --jrgr_real_dataset (a TFDS builder).",
                                         aliases=("real_manual_dir",))
    real_small_images: str = option("upscale", "Real photos smaller than the crop: upscale them, or an error.",
                                    choices=("upscale", "error"), aliases=("real_small_images",))

    def __post_init__(self):
        if self.alpha < 0:
            raise ValueError(f"--jrgr_alpha must be >= 0 (the weight of D_B's real term), got {self.alpha}")
        for name in ("unet_depth", "unet_filters", "gen_filters", "disc_filters", "disc_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--jrgr_{name} must be >= 1, got {getattr(self, name)}")


# the keywords the trainer accepted before JRGRConfig (renamed fields)
_OLD_KEYWORDS = {"strategy": "schedule"}


class JRGRTrainer(method_base.Trainer):
    """JRGR's seven networks, their optimizers and image pools; custom ``train_step`` per stage.

    ``fs_lr_factor`` / ``fr_lr_factor``: None = the code's rule (:func:`default_lr_factors`)."""

    schedule_flag = "--jrgr_schedule"

    def __init__(self, cfg: JRGRConfig | None = None, *, learning_rate: float = 1e-4, crop_size: int = 256,
                 seed: int = 0, **overrides):
        super().__init__()
        overrides = {_OLD_KEYWORDS.get(k, k): v for k, v in overrides.items()}
        cfg = dataclasses.replace(cfg or JRGRConfig(), **overrides)
        self.cfg = cfg
        strategy, pretrain = cfg.schedule, cfg.pretrain
        unet_depth, unet_filters, resnet_blocks = cfg.unet_depth, cfg.unet_filters, cfg.resnet_blocks
        gen_filters, gen_norm, disc_filters, disc_layers = cfg.gen_filters, cfg.gen_norm, cfg.disc_filters, cfg.disc_layers
        beta_1, pool_size, pretrain_lr = cfg.beta_1, cfg.pool_size, cfg.pretrain_lr
        self.strategy = strategy
        self.pretrain = _check_pretrain(pretrain)
        self.stages = stages_for(strategy, pretrain)
        self.alpha = float(cfg.alpha)
        self.lambda_adv_b = float(cfg.lambda_adv if cfg.lambda_adv_b is None else cfg.lambda_adv_b)
        self.lambda_adv_o = float(cfg.lambda_adv if cfg.lambda_adv_o is None else cfg.lambda_adv_o)
        self.lambda_cyc, self.lambda_mse = float(cfg.lambda_cyc), float(cfg.lambda_mse)
        defaults = default_lr_factors(strategy)
        fr, fs, d = cfg.fr_lr_factor, cfg.fs_lr_factor, cfg.d_lr_factor
        self.lr_factors = {"f_r": float(defaults["f_r"] if fr is None else fr),
                           "f_s": float(defaults["f_s"] if fs is None else fs),
                           "d_b": float(d), "d_os": float(d), "d_or": float(d)}
        for k, f in self.lr_factors.items():
            if not f > 0:
                flag = {"f_r": "fr", "f_s": "fs"}.get(k, "d")
                raise ValueError(f"the learning-rate factor of {k} must be > 0, got {f} (--jrgr_{flag}_lr_factor)")
        self.unet_depth = int(unet_depth)
        self.disc_layers = int(disc_layers)
        self.crop_size = int(crop_size)
        self.pool_size, self.seed = int(pool_size), int(seed)

        self.f_s = UNetRemoval(unet_depth, unet_filters, name="f_s")
        self.f_r = UNetRemoval(unet_depth, unet_filters, name="f_r")
        self.g_r = ResnetRainGenerator(resnet_blocks, gen_filters, gen_norm, name="g_r")
        self.g_s = ResnetRainGenerator(resnet_blocks, gen_filters, gen_norm, name="g_s")
        self.d_b = PatchDiscriminator(disc_layers, disc_filters, name="d_b")
        self.d_os = PatchDiscriminator(disc_layers, disc_filters, name="d_os")
        self.d_or = PatchDiscriminator(disc_layers, disc_filters, name="d_or")

        lr = float(learning_rate)

        # One gradient of the generator loss feeds three optimizers, so under mixed_float16 they share a
        # static loss scale (dynamic scales would differ per optimizer); bfloat16 and float32 need none.
        scale = STATIC_LOSS_SCALE if keras.mixed_precision.global_policy().name == "mixed_float16" else None

        def adam(value, name):
            return TorchAdam(value, beta_1=float(beta_1), beta_2=0.999, name=name, loss_scale_factor=scale)

        self.optimizers = self.optimizers_by_name = {
            "pretrain": adam(float(pretrain_lr or lr), "adam_pretrain"),
            "gen": adam(lr, "adam_gen"),  # G_r and G_s: the joint stage's base lr
            **{k: adam(lr * f, f"adam_{k}") for k, f in self.lr_factors.items()},
        }
        # joint steps taken (keys the pools' random draws; checkpointed)
        self.step_counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="jrgr_step",
                                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.pools: dict[str, ImagePool] = {}
        self._built_networks = False

    # -- the generic trainer interface -------------------------------------------------------------
    @property
    def pad_multiple(self) -> int:
        return 2 ** self.unet_depth

    def networks(self) -> dict:
        return {k: getattr(self, k) for k in NETWORKS}

    def sample_shape(self) -> tuple:
        side = max(self.pad_multiple, 2 ** (self.disc_layers + 2))
        return (1, side, side, 3)

    def optimizer_variables(self, key: str) -> list:
        if key == "pretrain":
            return self._variables_of(self._pretrain_networks())
        if key == "gen":
            return self._variables_of(("g_r", "g_s"))
        return self._variables_of((key,))

    @property
    def update_d_b(self) -> bool:
        return self.lambda_adv_b > 0

    @property
    def update_d_o(self) -> bool:
        return self.lambda_adv_o > 0

    @property
    def copies_shared_pretraining(self) -> bool:
        """F_r starts the joint stage as a copy of the pre-trained F_s (the code's recipe)."""
        return self.strategy == "proposed" and self.pretrain == "shared"

    def build_extra(self):
        if not self.pools:
            shape = (self.crop_size, self.crop_size, 3)
            self.pools = {k: ImagePool(self.pool_size, shape, seed=self.seed, stream=i, name=f"pool_{k}")
                          for i, k in enumerate(POOLS)}
        self._built_networks = True

    def _pretrain_networks(self) -> tuple:
        return self.stages[0].train if self.stages[0].name == "pretrain" else ("f_s", "f_r")

    def _variables_of(self, names) -> list:
        out = []
        for n in names:
            out.extend(getattr(self, n).trainable_weights)
        return out

    def _discriminators(self) -> list:
        return [n for n in ("d_b", "d_os", "d_or")
                if (n == "d_b" and self.update_d_b) or (n != "d_b" and self.update_d_o)]

    def stage_variables(self, index=None) -> list:
        stage = self.stages[self.stage_index if index is None else index]
        names = list(stage.train)
        if stage.name == "joint":
            names = [n for n in names if n not in ("d_b", "d_os", "d_or") or n in self._discriminators()]
        return self._variables_of(names)

    def on_stage_start(self, index: int):
        """With the shared pre-training (``proposed``, ``pretrain="shared"``) entering the joint stage
        before any joint step (``jrgr_step == 0``) copies F_s, weights and BatchNorm statistics, into
        F_r, as the code loads one pre-trained U-Net into both; a resumed joint stage (``jrgr_step >
        0``) keeps its F_r. The copy is repeatable (F_s only changes in joint steps), so a run resumed
        at the start of the joint stage gets the same F_r."""
        if (self.stage.name == "joint" and self.copies_shared_pretraining and self._built_networks
                and int(self.step_counter.numpy()) == 0):
            self.copy_f_s_to_f_r()

    def copy_f_s_to_f_r(self):
        for target, source in zip(self.f_r.weights, self.f_s.weights):
            target.assign(source)

    def extra_checkpoint_items(self) -> dict:
        return {"jrgr_step": self.step_counter}

    def step_state_variables(self) -> list:
        """What a step changes besides the checkpointed items: the image pools (``--on_nan=skip_batch``
        restores them with the rest, so a skipped step leaves no fake of its own in a pool)."""
        return [v for pool in self.pools.values() for v in (pool.images, pool.count)]

    def inference_network(self):
        """F_r with its BatchNorm moving averages (the test-time path)."""
        return self.f_r

    # -- the two closed loops -----------------------------------------------------------------------
    def _closed_loop(self, o, a: str, b: str, training) -> dict:
        """Domain a -> b -> a (a, b in {"s", "r"}): decompose with F_a, translate the rain layer with
        G_b, entangle, decompose the result with F_b, translate back with G_a, entangle again."""
        f_a, f_b = getattr(self, f"f_{a}"), getattr(self, f"f_{b}")
        g_to_b, g_to_a = getattr(self, f"g_{b}"), getattr(self, f"g_{a}")
        b_a = f_a(o, training=training)
        r_a = o - b_a
        r_ab = g_to_b(r_a, training=training)
        o_ab = b_a + r_ab
        b_ab = f_b(o_ab, training=training)
        r_ab_dis = o_ab - b_ab
        r_aba = g_to_a(r_ab_dis, training=training)
        ab = f"{a}2{b}"
        return {f"o_{a}": o, f"b_{a}": b_a, f"r_{a}": r_a, f"r_{ab}": r_ab, f"o_{ab}": o_ab, f"b_{ab}": b_ab,
                f"r_{ab}_dis": r_ab_dis, f"r_{ab}2{a}": r_aba, f"o_{a}_rec": b_ab + r_aba}

    def synthetic_loop(self, o_s, training=False) -> dict:
        """S2R then R2S on a synthetic rainy image (Fig. 6 f-j)."""
        return self._closed_loop(o_s, "s", "r", training)

    def real_loop(self, o_r, training=False) -> dict:
        """R2S then S2R on a real rainy image (Fig. 6 a-e)."""
        return self._closed_loop(o_r, "r", "s", training)

    def intermediates(self, synthetic, real, training=False) -> dict:
        """Every intermediate of both loops (Fig. 6), keyed as in the module docstring; the networks
        run in the code's order (F_s, G_r, F_r, G_s on O_s, then F_r, G_s, F_s, G_r on O_r), which
        fixes the BatchNorm running statistics."""
        return {**self.synthetic_loop(synthetic, training), **self.real_loop(real, training)}

    # -- losses -------------------------------------------------------------------------------------
    def generator_losses(self, out: dict, clean) -> dict:
        """The generator-side terms (unweighted, in the code's [-1, 1] scale) from the intermediates;
        adversarial terms whose weight is 0 are not computed (reported as 0)."""
        zero = tf.constant(0.0)
        t = {}
        if self.update_d_b:
            t["adv_b"] = tf.add_n([lsgan(self.d_b(out[k]), 1.0) for k in ("b_s", "b_s2r", "b_r", "b_r2s")])
        else:
            t["adv_b"] = zero
        if self.update_d_o:
            t["adv_os"] = lsgan(self.d_os(out["o_r2s"]), 1.0)
            t["adv_or"] = lsgan(self.d_or(out["o_s2r"]), 1.0)
        else:
            t["adv_os"] = t["adv_or"] = zero
        t["cyc_os"] = l1(out["o_s"], out["o_s_rec"])
        t["cyc_or"] = l1(out["o_r"], out["o_r_rec"])
        t["cyc_bs"] = l1(out["b_s"], out["b_s2r"])
        t["cyc_br"] = l1(out["b_r"], out["b_r2s"])
        t["mse"] = mse(out["b_s"], clean) + mse(out["b_s2r"], clean)
        return t

    def generator_total(self, t: dict):
        return (self.lambda_adv_b * t["adv_b"] + self.lambda_adv_o * (t["adv_os"] + t["adv_or"])
                + self.lambda_cyc * (t["cyc_os"] + t["cyc_or"] + t["cyc_bs"] + t["cyc_br"])
                + self.lambda_mse * t["mse"])

    def pooled_fakes(self, out: dict, clean, step) -> dict:
        """The discriminators' inputs through the image pools (detached): the six fakes, and under
        "clean" the D_B_REAL_DRAWS real backgrounds [4, H, W, 3] drawn from the pool of clean inputs
        after this batch's ``clean`` went in (the code's ``Pool_real_B.query(Bs)``, then
        ``query(return_num=4)``)."""
        sg = tf.stop_gradient
        fakes = {k: sg(out[k]) for k in POOLS if k != "clean"}
        clean = tf.convert_to_tensor(clean, tf.float32)
        if not self.pools:  # (networks not built: no pools) the draws come from this batch
            fakes["clean"] = draw_uniformly(clean, D_B_REAL_DRAWS, self.seed * 64 + 32 + POOLS.index("clean"), step)
            return fakes
        fakes = {k: self.pools[k].query(v, step) for k, v in fakes.items()}
        self.pools["clean"].query(clean, step)  # stored; the returned batch is not used (as the code's)
        fakes["clean"] = self.pools["clean"].sample(D_B_REAL_DRAWS, step, images=clean)
        return fakes

    def discriminator_losses(self, o_s, o_r, fakes: dict) -> dict:
        """d_b, d_os, d_or from the (pooled) inputs; a discriminator with adversarial weight 0 is skipped.
        ``fakes["clean"]``: the real backgrounds drawn for D_B, one per fake background."""
        t = {}
        if self.update_d_b:
            reals = fakes["clean"]
            if reals.shape[0] != D_B_REAL_DRAWS:
                raise ValueError(f"D_B takes {D_B_REAL_DRAWS} real backgrounds (one per fake), got {reals.shape[0]}")
            per_draw = tf.reduce_mean(tf.square(self.d_b(reals) - 1.0), axis=[1, 2, 3])  # ls(D_B(B_k), 1)
            real_weight = self.alpha / D_B_REAL_DRAWS
            fake = tf.add_n([lsgan(self.d_b(fakes[k]), 0.0) for k in ("b_s", "b_s2r", "b_r", "b_r2s")])
            t["d_b"] = 0.5 * (real_weight * tf.reduce_sum(per_draw) + fake)
        if self.update_d_o:
            t["d_os"] = 0.5 * (lsgan(self.d_os(o_s), 1.0) + lsgan(self.d_os(fakes["o_r2s"]), 0.0))
            t["d_or"] = 0.5 * (lsgan(self.d_or(o_r), 1.0) + lsgan(self.d_or(fakes["o_s2r"]), 0.0))
        return t

    # -- steps --------------------------------------------------------------------------------------
    def _apply(self, optimizer_name, grads_by_var, variables):
        pairs = [(grads_by_var[id(v)], v) for v in variables if grads_by_var.get(id(v)) is not None]
        if pairs:
            self.optimizers_by_name[optimizer_name].apply([g for g, _ in pairs], [v for _, v in pairs])

    def _sync_learning_rates(self):
        base = self.optimizers_by_name["gen"].learning_rate
        for k, factor in self.lr_factors.items():
            self.optimizers_by_name[k].learning_rate.assign(base * factor)

    def pretrain_step(self, data):
        rainy, clean = data["rainy"], data["clean"]
        names = self.stage.train
        variables = self._variables_of(names)
        with tf.GradientTape() as tape:
            logs = {f"mse_{n}": mse(getattr(self, n)(rainy, training=True), clean) for n in names}
            loss = tf.add_n(list(logs.values()))
            scaled = for_gradients(loss, self.optimizers_by_name["pretrain"])
        grads = tape.gradient(scaled, variables)
        self._apply("pretrain", {id(v): g for g, v in zip(grads, variables)}, variables)
        return {"loss": loss, **logs}

    def generator_step(self, data):
        """The removal and generation nets' update (the code's ``backward_G`` + ``optimizer_G.step``):
        both loops in training mode, the generator loss, one gradient, F_s / F_r / (G_r, G_s) each by
        its optimizer. The discriminators are evaluated, not changed. Returns (intermediates, logs)."""
        o_s, clean, o_r = data["rainy"], data["clean"], data["real"]
        gen_vars = self._variables_of(("f_s", "f_r", "g_r", "g_s"))
        with tf.GradientTape() as tape:
            out = self.intermediates(o_s, o_r, training=True)
            terms = self.generator_losses(out, clean)
            g_loss = self.generator_total(terms)
            scaled = for_gradients(g_loss, self.optimizers_by_name["gen"])  # the scale all of them share
        grads = {id(v): g for g, v in zip(tape.gradient(scaled, gen_vars), gen_vars)}
        self._sync_learning_rates()
        self._apply("gen", grads, self._variables_of(("g_r", "g_s")))
        self._apply("f_r", grads, self._variables_of(("f_r",)))
        self._apply("f_s", grads, self._variables_of(("f_s",)))
        return out, {"loss": g_loss, **terms}

    def discriminator_step(self, o_s, o_r, fakes: dict) -> dict:
        """The discriminators' update on the (detached, pooled) ``fakes`` of :meth:`pooled_fakes`; the
        removal and generation nets are not run. Discriminators with adversarial weight 0 are skipped."""
        d_nets = self._discriminators()
        if not d_nets:
            return {}
        self._sync_learning_rates()
        d_vars = self._variables_of(d_nets)
        with tf.GradientTape() as tape:
            d_terms = self.discriminator_losses(o_s, o_r, fakes)
            d_loss = tf.add_n(list(d_terms.values()))
            scaled = for_gradients(d_loss, self.optimizers_by_name[d_nets[0]])
        d_grads = {id(v): g for g, v in zip(tape.gradient(scaled, d_vars), d_vars)}
        for n in d_nets:
            self._apply(n, d_grads, self._variables_of((n,)))
        return d_terms

    def joint_step(self, data):
        """One step of the code's ``optimize_parameters``: the generator update, then the three
        discriminators' on the fakes of the same forward pass; ``jrgr_step`` counts these steps."""
        out, logs = self.generator_step(data)
        if self._discriminators():
            fakes = self.pooled_fakes(out, data["clean"], self.step_counter)
            logs.update(self.discriminator_step(data["rainy"], data["real"], fakes))
        self.step_counter.assign_add(1)
        return logs

    def train_step(self, data):
        if self.stage.name == "pretrain":
            return self.pretrain_step(data)
        if "real" not in data:
            raise ValueError("JRGR's joint stage needs batches with 'real' (unpaired real rainy crops): "
                             "give --real_dataset")
        return self.joint_step(data)


# ------------------------------------------------------------------------------------------------
# Rain generation (the generation half)
# ------------------------------------------------------------------------------------------------


def _nets(trainer_or_nets):
    if isinstance(trainer_or_nets, dict):
        return trainer_or_nets
    return trainer_or_nets.networks()


def generate_rain(trainer_or_nets, clean_images, synthetic_rain_layers, clip: bool = True):
    """Realistic rainy images from clean backgrounds and synthetic rain layers: B + G_r(R_syn)
    (the entanglement of the S2R module with a known background). All [B, H, W, 3], sides multiples
    of 4; ``synthetic_rain_layers`` = synthetic rainy - clean (e.g. from ``rain_synthesis``)."""
    g_r = _nets(trainer_or_nets)["g_r"]
    out = clean_images + g_r(synthetic_rain_layers, training=False)
    return tf.clip_by_value(out, 0.0, 1.0) if clip else out


def synthetic_to_real(trainer_or_nets, synthetic_rainy, clip: bool = True):
    """The S2R module on synthetic rainy images: F_s(O_s) + G_r(O_s - F_s(O_s)) (Fig. 6 h)."""
    nets = _nets(trainer_or_nets)
    b = nets["f_s"](synthetic_rainy, training=False)
    out = b + nets["g_r"](synthetic_rainy - b, training=False)
    return tf.clip_by_value(out, 0.0, 1.0) if clip else out


def real_to_synthetic(trainer_or_nets, real_rainy, clip: bool = True):
    """The R2S module: F_r(O_r) + G_s(O_r - F_r(O_r)) (Fig. 6 c)."""
    nets = _nets(trainer_or_nets)
    b = nets["f_r"](real_rainy, training=False)
    out = b + nets["g_s"](real_rainy - b, training=False)
    return tf.clip_by_value(out, 0.0, 1.0) if clip else out


# ------------------------------------------------------------------------------------------------
# Registry glue
# ------------------------------------------------------------------------------------------------


def trainer_from_config(config: dict) -> JRGRTrainer:
    """The trainer of a flat dict of settings (old style)."""
    from erl_derain.methods import make_trainer

    return make_trainer({"method": "jrgr", **config})


def build_trainer(cfg: JRGRConfig, record) -> JRGRTrainer:
    return JRGRTrainer(cfg, learning_rate=record.lr, crop_size=record.run.crop_size, seed=record.run.seed)


def real_stream(cfg: JRGRConfig, record, *, start_index: int, batch_size: int, cache_limit_bytes=None, rows=None):
    """The unpaired real rainy crops the joint stage trains on (``--jrgr_real_dataset``)."""
    from erl_derain.data import unpaired

    if not cfg.real_dataset:
        raise MethodError("--method=jrgr needs --jrgr_real_dataset (real_rain, or a folder of real rainy photos)")
    run = record.run
    ds = unpaired.unpaired_dataset(cfg.real_dataset, cfg.real_split, batch_size=batch_size, crop_size=run.crop_size,
                                   seed=run.seed, start_index=start_index, flip=run.flip, data_dir=run.data_dir,
                                   manual_dir=cfg.real_manual_dir, small_images=cfg.real_small_images,
                                   cache_limit_bytes=cache_limit_bytes, rows=rows)
    return ds.map(lambda b: {"real": b["rainy"], "real_name": b["name"]})


def generate_command(flag_values) -> int:
    """``erl-derain generate``: JRGR's rain generation. Synthetic rainy images (``--input_dir``) ->
    realistic ones through the S2R path, or clean photos (``--clean_dir``) + synthesised rain layers ->
    B + G_r(R)."""
    import os

    from erl_derain.data import rain_synthesis
    from erl_derain.data.image_io import list_images, load_rgb, save_rgb
    from erl_derain.inference import pad_to_multiple
    from erl_derain.training import load_trainer

    model_dir, output_dir = flag_values.model_dir, flag_values.output_dir
    for name, value in (("model_dir", model_dir), ("output_dir", output_dir)):
        if not value:
            raise MethodError(f"--{name} is required for `erl-derain generate`")
    if bool(flag_values.input_dir) == bool(flag_values.clean_dir):
        raise MethodError("give one of --input_dir (synthetic rainy images) or --clean_dir (clean photos)")
    trainer, record = load_trainer(model_dir)
    if record.method != "jrgr":
        raise MethodError(f"--model_dir={model_dir} holds a {record.method} run: generate needs a JRGR run")
    rng = np.random.default_rng(flag_values.seed)
    files = list_images(flag_values.input_dir or flag_values.clean_dir)
    for path in files:
        image = load_rgb(path)
        x, h, w = pad_to_multiple(tf.constant(image[None]), trainer.pad_multiple)
        if flag_values.input_dir:
            out = synthetic_to_real(trainer, x)
        else:
            rainy, _ = rain_synthesis.synthesize_rain(x.numpy()[0], rng=rng)
            out = generate_rain(trainer, x, tf.constant(rainy[None], tf.float32) - x)
        result = np.asarray(out)[0, :h, :w]
        out_path = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        save_rgb(out_path, result)
        print(f"  {path} -> {out_path}", flush=True)
    print(f"Generated {len(files)} realistic rainy image(s) into {output_dir}")
    return 0


register(MethodSpec(
    name="jrgr", description="JRGR (CVPR 2021): joint rain generation and removal, disentangled translation on "
    "rain layers (needs --jrgr_real_dataset)", config_class=JRGRConfig, flag_prefix=PREFIX, default_lr=1e-4,
    schedule_flag="--jrgr_schedule", build=build_trainer,
    tiny={"schedule": "init1", "unet_depth": 2, "unet_filters": 4, "resnet_blocks": 1, "gen_filters": 4,
          "disc_filters": 4, "disc_layers": 1, "pool_size": 2}, tiny_crop=16,
    streams=(StreamSpec("real", real_stream, "unpaired real rainy crops (--jrgr_real_dataset)",
                        source_setting="real_dataset"),),
    verbs=(VerbSpec("generate", "JRGR: realistic rainy images from synthetic ones (--input_dir) or from clean photos "
                    "(--clean_dir) with a trained run (--model_dir) into --output_dir", generate_command,
                    flags=("model_dir", "output_dir", "input_dir", "clean_dir", "seed")),),
    display_name="JRGR (joint)", paper_batch=(256, 16, "JRGR Sec. 3.3: 256x256 random crops, batch 16"), heavy=True))


def parameter_count(net) -> int:
    return int(sum(np.prod(v.shape) for v in net.weights))
