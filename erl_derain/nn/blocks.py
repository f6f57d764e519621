"""Shared Keras building blocks (dense block, squeeze-excitation, feature fusion, a dilated convolution
as one op).

Every method module builds its networks from these layers; add a new block here rather than inside
a method module when a second method could use it.
"""

from __future__ import annotations

import functools

import keras
from keras import layers, ops


def conv3x3(filters: int, name: str | None = None, **kwargs) -> layers.Conv2D:
    return layers.Conv2D(filters, 3, padding="same", name=name, **kwargs)


@functools.lru_cache(maxsize=None)
def _one_op_dilation() -> bool:
    """Whether a dilated convolution can be TensorFlow's single Conv2D op, forward and backward: with
    oneDNN (on by default on x86 CPUs; ``TF_ENABLE_ONEDNN_OPTS=0`` turns it off) or on a GPU. TensorFlow's
    own CPU kernels run the forward op but not its gradients ("Current CPU implementations do not yet
    support dilation rates larger than 1")."""
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled() or tf.config.list_logical_devices("GPU"))


class DilatedConv2D(layers.Conv2D):
    """``layers.Conv2D`` whose dilated convolution is one Conv2D op with a ``dilations`` attribute.

    ``tf.nn.convolution`` (what Keras calls) turns a dilated convolution into SpaceToBatchND -> Conv2D
    -> BatchToSpaceND: the image is cut into dilation**2 sub-images, convolved and put back, two
    reshuffles of the whole feature map per layer. The single op computes the same sums (same
    variables, same config: a drop-in for ``Conv2D``; outputs agree to float32 rounding). Falls back to
    Keras's path where the single op has no gradient (see :func:`_one_op_dilation`), for other
    backends, channels-first data and grouped convolutions."""

    def convolution_op(self, inputs, kernel):
        if (max(self.dilation_rate) == 1 or self.groups != 1 or self.data_format != "channels_last"
                or keras.backend.backend() != "tensorflow" or not _one_op_dilation()):
            return super().convolution_op(inputs, kernel)
        import tensorflow as tf

        return tf.nn.conv2d(inputs, tf.cast(kernel, inputs.dtype), strides=[1, *self.strides, 1],
                            padding=self.padding.upper(), dilations=[1, *self.dilation_rate, 1])


class DenseBlock(layers.Layer):
    """Densely connected block (Huang et al.): each 3x3 conv sees the concatenation of all earlier
    features, followed by a 1x1 transition to ``out_channels``.

    ERL-Net (Sec. 3.2) stacks dense blocks inside a U-Net; the paper does not give the block's
    size, so the defaults (4 layers, growth 32, LeakyReLU 0.1) are ours.
    """

    def __init__(self, out_channels: int, num_layers: int = 4, growth: int = 32,
                 negative_slope: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = out_channels
        self.num_layers = num_layers
        self.growth = growth
        self.negative_slope = negative_slope
        self.convs = [conv3x3(growth, name=f"conv{i}") for i in range(num_layers)]
        self.acts = [layers.LeakyReLU(negative_slope) for _ in range(num_layers)]
        self.transition = layers.Conv2D(out_channels, 1, name="transition")
        self.out_act = layers.LeakyReLU(negative_slope)

    def call(self, x, return_preactivation: bool = False):
        """The block's output; with ``return_preactivation`` the pair (transition output before the
        last activation, output)."""
        features = [x]
        for conv, act in zip(self.convs, self.acts):
            inp = features[0] if len(features) == 1 else ops.concatenate(features, axis=-1)
            features.append(act(conv(inp)))
        pre = self.transition(ops.concatenate(features, axis=-1))
        out = self.out_act(pre)
        return (pre, out) if return_preactivation else out

    def get_config(self):
        return {**super().get_config(), "out_channels": self.out_channels, "num_layers": self.num_layers,
                "growth": self.growth, "negative_slope": self.negative_slope}


class SqueezeExcitation(layers.Layer):
    """Channel recalibration (Hu et al.): x * sigmoid(W2 relu(W1 GAP(x))), reduction ``ratio``."""

    def __init__(self, ratio: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.ratio = ratio

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.fc1 = layers.Dense(max(1, channels // self.ratio), activation="relu", name="fc1")
        self.fc2 = layers.Dense(channels, activation="sigmoid", name="fc2")
        self.fc1.build((None, channels))
        self.fc2.build((None, max(1, channels // self.ratio)))

    def call(self, x):
        w = ops.mean(x, axis=(1, 2), keepdims=True)
        return x * self.fc2(self.fc1(w))

    def get_config(self):
        return {**super().get_config(), "ratio": self.ratio}


class FeatureFusion(layers.Layer):
    """ERL-Net's feature fusion layer FUS (Fig. 2c), placed right after each skip concatenation.

    "Feature map recalibration and residual guided layers combination": the concatenation
    [up-sampled decoder feature, skip feature] is recalibrated by squeeze-excitation, projected by a
    1x1 convolution to the level width and added to the up-sampled decoder feature (the residual
    guide). The paper draws the layer without sizes; SE ratio 16 is our default.
    """

    def __init__(self, channels: int, se_ratio: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.se_ratio = se_ratio
        self.se = SqueezeExcitation(se_ratio, name="se")
        self.project = layers.Conv2D(channels, 1, name="project")

    def call(self, decoder_feature, skip_feature):
        x = ops.concatenate([decoder_feature, skip_feature], axis=-1)
        return decoder_feature + self.project(self.se(x))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "se_ratio": self.se_ratio}


def trainable_weights_of(*models: keras.Layer) -> list:
    """The trainable variables of several sub-networks, in a stable order, without duplicates."""
    seen, out = set(), []
    for m in models:
        for v in m.trainable_weights:
            key = id(v)
            if key not in seen:
                seen.add(key)
                out.append(v)
    return out
