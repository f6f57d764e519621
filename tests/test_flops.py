"""erl_derain.flops: multiply-adds counted from the traced graph, against hand counts."""

from __future__ import annotations

import collections

import keras
import pytest
from keras import layers

from erl_derain import flops


def _model(input_shape, *stack):
    inp = keras.Input(input_shape)
    x = inp
    for layer in stack:
        x = layer(x)
    return keras.Model(inp, x)


def test_two_layer_network_against_a_hand_count():
    model = _model((10, 12, 3), layers.Conv2D(8, 3, padding="same"), layers.Conv2D(4, 1))
    # 3x3 conv 3->8, 'same' on 10x12: each of the 10*12 outputs x 8 channels sums 3*3*3 products;
    # then the 1x1 conv 8->4: 10*12 outputs x 4 channels, 8 products each. Biases are additions.
    hand = 10 * 12 * 8 * (3 * 3 * 3) + 10 * 12 * 4 * 8  # 25,920 + 3,840 = 29,760
    by_type = collections.Counter()
    assert flops.count_macs(model, (10, 12), by_type=by_type) == hand
    assert by_type == {"Conv2D": hand}
    assert flops.macs_per_megapixel(model, (10, 12)) == pytest.approx(hand / (10 * 12 / 1e6))


def test_strided_conv_counts_its_output_pixels_only():
    model = _model((10, 12, 4), layers.Conv2D(6, 3, strides=2, padding="same"))
    # stride 2, 'same': a 5x6 output, 6 channels, 3*3*4 products each
    assert flops.count_macs(model, (10, 12), 4) == 5 * 6 * 6 * (3 * 3 * 4)  # 6,480


def test_transposed_conv_multiplies_each_input_pixel_with_the_whole_kernel():
    model = _model((5, 6, 6), layers.Conv2DTranspose(5, 4, strides=2, padding="same"))
    # 5x6 input pixels x 6 channels, each scattered through a 4x4 kernel into 5 output channels
    # (a 10x12 output: 10*12*5 outputs receive (4*4/(2*2))*6 = 24 products each: the same 14,400)
    assert flops.count_macs(model, (5, 6), 6) == 5 * 6 * 6 * (4 * 4) * 5  # 14,400
    assert model(keras.ops.zeros((1, 5, 6, 6))).shape == (1, 10, 12, 5)


def test_dilation_does_not_change_the_count():
    plain = _model((10, 12, 3), layers.Conv2D(8, 3, padding="same"))
    dilated = _model((10, 12, 3), layers.Conv2D(8, 3, padding="same", dilation_rate=2))
    assert flops.count_macs(dilated, (10, 12)) == flops.count_macs(plain, (10, 12)) == 10 * 12 * 8 * 27


def test_depthwise_grouped_and_dense_layers():
    depthwise = _model((10, 12, 8), layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2))
    # every input channel has its own 3x3 filters, 2 per channel: 10*12 * 8*2 outputs, 9 products each
    assert flops.count_macs(depthwise, (10, 12), 8) == 10 * 12 * (8 * 2) * 9  # 17,280
    grouped = _model((10, 12, 4), layers.Conv2D(6, 3, padding="same", groups=2))
    # two groups: each of the 6 output channels sees 4/2 = 2 input channels
    assert flops.count_macs(grouped, (10, 12), 4) == 10 * 12 * 6 * (3 * 3 * 2)  # 12,960
    dense = _model((10, 12, 8), layers.Dense(5))
    assert flops.count_macs(dense, (10, 12), 8) == 10 * 12 * 8 * 5  # 4,800


def test_a_plain_callable_and_a_nested_function_are_counted():
    import tensorflow as tf

    conv = _model((10, 12, 3), layers.Conv2D(8, 3, padding="same"))
    inner = tf.function(lambda x: conv(x))  # traced as a call op: the count descends into it
    assert flops.count_macs(lambda x: inner(x) + inner(x), (10, 12)) == 2 * 10 * 12 * 8 * 27


def test_typical_width_is_the_conv_width_doing_most_work():
    model = _model((10, 12, 3), layers.Conv2D(8, 3, padding="same"), layers.Conv2D(16, 3, padding="same"),
                   layers.Conv2D(4, 1))
    widths = collections.Counter()
    total = flops.count_macs(model, (10, 12), by_width=widths)
    # 3->8: 120*8*27 = 25,920; 8->16: 120*16*72 = 138,240; 16->4 (1x1): 120*4*16 = 7,680
    assert widths == {8: 25920, 16: 138240, 4: 7680} and total == 25920 + 138240 + 7680
    assert flops.typical_width(widths) == 16


def test_training_step_gradients_are_counted():
    import tensorflow as tf

    conv = _model((10, 12, 3), layers.Conv2D(8, 3, padding="same"))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(conv(x))
        return tape.gradient(loss, [conv.trainable_weights[0], x])

    by_type = collections.Counter()
    graph = step.get_concrete_function(tf.TensorSpec([1, 10, 12, 3])).graph
    # forward, the input gradient and the kernel gradient each take one product per
    # (output pixel, output channel, kernel tap, input channel): 3 x 25,920
    assert flops.graph_macs(graph, by_type) == 3 * 10 * 12 * 8 * 27
    assert by_type == {"Conv2D": 25920, "Conv2DBackpropInput": 25920, "Conv2DBackpropFilter": 25920}
