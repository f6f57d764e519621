"""Multiply-adds of a network's forward pass (or a training step), counted from its traced TensorFlow graph.

``count_macs(model, (height, width))`` traces ``model`` (any Keras model or NHWC -> NHWC callable,
called with ``training=False`` when it takes that argument) on one float32 ``1 x height x width x
channels`` image with ``tf.function`` and adds up the multiply-adds of every op of the graph that
multiplies with a weight tensor, from the op's static shapes:

* ``Conv2D`` (strided and dilated alike: dilation spreads the kernel taps, it does not add any):
  ``N * out_h * out_w * k_h * k_w * (c_in / groups) * c_out``, with ``groups = c_in / kernel_in``;
* ``DepthwiseConv2dNative``: ``N * out_h * out_w * k_h * k_w * c_in * multiplier``;
* ``Conv2DBackpropInput`` (a transposed convolution; Keras' ``Conv2DTranspose``): every *input*
  pixel is multiplied with the whole kernel, ``N * in_h * in_w * k_h * k_w * c_in * c_out``;
* ``MatMul`` / ``BatchMatMul*``: ``batch * m * k * n``;
* in a training step's graph also the gradients: ``Conv2DBackpropInput`` as above (per pixel of
  the output gradient) and ``Conv2DBackpropFilter`` (``N * out_h * out_w * k_h * k_w * c_in *
  c_out``), and their depthwise forms.

Additions, activations, normalisations and pooling are not counted (they are a few per output
element, not per weight). ``tf.compat.v1.profiler``'s ``float_operation()`` counts the same ops (as
2 FLOPs per multiply-add) plus ``BiasAdd`` and a few element-wise ops; counting here keeps the rule
explicit and the result in multiply-adds. Ops inside called functions (``PartitionedCall``,
conditionals) are counted by descending into their function graphs (a conditional: its costlier
branch); a ``While`` loop whose body multiplies with weights is an error (the graph does not give
its trip count), not a miscount. ``macs_per_megapixel`` divides by the image's pixels in millions.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import tensorflow as tf

__all__ = ["count_macs", "graph_macs", "macs_per_megapixel", "op_macs", "typical_width"]

_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")
_LOOP_OPS = ("While", "StatelessWhile", "If", "StatelessIf")


def _dims(tensor, what: str, op) -> list[int]:
    shape = tensor.shape
    if shape.rank is None or any(d is None for d in shape.as_list()):
        raise ValueError(f"cannot count the multiply-adds of {op.type} op {op.name!r}: its {what} has the unknown "
                         f"shape {shape} (trace with a fixed input size)")
    return shape.as_list()


def _spatial(dims: list[int], op) -> list[int]:
    """(N, H, W, C) of a 4-D activation shape, whatever the op's ``data_format``."""
    try:
        fmt = op.get_attr("data_format")
    except (ValueError, TypeError):
        fmt = b"NHWC"
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    return [dims[0], dims[2], dims[3], dims[1]] if fmt == "NCHW" else dims


def op_macs(op) -> int:
    """Multiply-adds of one graph op (0 for ops that do not multiply with a weight tensor)."""
    t = op.type
    if t == "Conv2D":
        n, oh, ow, _ = _spatial(_dims(op.outputs[0], "output", op), op)
        kh, kw, ki, ko = _dims(op.inputs[1], "kernel", op)
        return n * oh * ow * kh * kw * ki * ko  # ki = c_in / groups
    if t == "DepthwiseConv2dNative":
        n, oh, ow, _ = _spatial(_dims(op.outputs[0], "output", op), op)
        kh, kw, ci, mult = _dims(op.inputs[1], "kernel", op)
        return n * oh * ow * kh * kw * ci * mult
    if t in ("Conv2DBackpropInput", "DepthwiseConv2dNativeBackpropInput"):
        # a transposed conv, or the input gradient of a conv: every pixel of ``out_backprop`` (the
        # transposed conv's input) times the whole kernel ([k_h, k_w, in, out] of the forward conv)
        kh, kw, a, b = _dims(op.inputs[1], "kernel", op)
        n, ih, iw, _ = _spatial(_dims(op.inputs[2], "input", op), op)
        return n * ih * iw * kh * kw * a * b
    if t in ("Conv2DBackpropFilter", "DepthwiseConv2dNativeBackpropFilter"):
        # the kernel gradient: every pixel of ``out_backprop`` times every tap of the kernel
        kh, kw, a, b = _dims(op.outputs[0], "kernel gradient", op)
        n, oh, ow, _ = _spatial(_dims(op.inputs[2], "output gradient", op), op)
        return n * oh * ow * kh * kw * a * b
    if t == "MatMul":
        a, b = _dims(op.inputs[0], "left operand", op), _dims(op.inputs[1], "right operand", op)
        m, k = (a[1], a[0]) if op.get_attr("transpose_a") else (a[0], a[1])
        n = b[0] if op.get_attr("transpose_b") else b[1]
        return m * k * n
    if t in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
        out = _dims(op.outputs[0], "output", op)
        a = _dims(op.inputs[0], "left operand", op)
        k = a[-2] if op.get_attr("adj_x") else a[-1]
        return int(np.prod(out, dtype=np.int64)) * k
    if t in ("Conv3D", "Conv3DBackpropInputV2", "Conv3DBackpropFilterV2", "Einsum"):
        raise NotImplementedError(f"multiply-adds of {t} ops (op {op.name!r}) are not counted yet")
    return 0


def _function_graphs(op) -> list:
    names = []
    for attr in ("f", "body", "then_branch", "else_branch"):
        try:
            names.append(op.get_attr(attr).name)
        except ValueError:
            continue
    graphs = []
    for name in names:
        fn = op.graph._get_function(name)  # noqa: SLF001 (the graph's own function library)
        if fn is None or getattr(fn, "graph", None) is None:
            raise ValueError(f"cannot count inside {op.type} op {op.name!r}: function {name!r} has no graph")
        graphs.append(fn.graph)
    return graphs


def graph_macs(graph, by_type: Counter | None = None, by_width: Counter | None = None) -> int:
    """Multiply-adds of every op of ``graph`` (a ``tf.Graph`` / ``FuncGraph``), descending into
    called functions; ``by_type`` (a Counter) collects them per op type, ``by_width`` those of the
    ``Conv2D`` ops per output-channel count."""
    total = 0
    for op in graph.get_operations():
        if op.type in _CALL_OPS or op.type in _LOOP_OPS:
            counts = []
            for g in _function_graphs(op):
                types, widths = Counter(), Counter()
                counts.append((graph_macs(g, types, widths), types, widths))
            if op.type in ("While", "StatelessWhile") and any(c[0] for c in counts):
                raise ValueError(f"{op.type} op {op.name!r} multiplies with weights in a loop whose trip count the "
                                 "graph does not give: its multiply-adds cannot be counted statically")
            # a call: its function; a conditional: the costlier branch (an upper bound)
            chosen = [max(counts, key=lambda c: c[0])] if op.type in ("If", "StatelessIf") else counts
            for macs, types, widths in chosen:
                total += macs
                if by_type is not None:
                    by_type.update(types)
                if by_width is not None:
                    by_width.update(widths)
            continue
        macs = op_macs(op)
        if macs and by_type is not None:
            by_type[op.type] += macs
        if macs and by_width is not None and op.type == "Conv2D":
            by_width[_spatial(_dims(op.outputs[0], "output", op), op)[3]] += macs
        total += macs
    return total


def _call(model):
    from erl_derain.inference import _accepts_training

    if _accepts_training(model):
        return lambda x: model(x, training=False)
    return model


def _graph(model, size: tuple[int, int], channels: int):
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    fn = _call(model)
    return tf.function(lambda x: fn(x)).get_concrete_function(tf.TensorSpec([1, h, w, int(channels)], tf.float32)).graph


def count_macs(model, size: tuple[int, int], channels: int = 3, by_type: Counter | None = None,
               by_width: Counter | None = None) -> int:
    """Multiply-adds of ``model``'s forward pass on one ``size`` = (height, width) image with
    ``channels`` channels (module docstring). ``by_type`` / ``by_width``: Counters filled per op
    type / per ``Conv2D`` output width (``graph_macs``)."""
    return graph_macs(_graph(model, size, channels), by_type, by_width)


def macs_per_megapixel(model, size: tuple[int, int] = (512, 512), channels: int = 3) -> float:
    """``count_macs`` per million pixels of the image (the networks are fully convolutional, so this
    is nearly independent of the size; padding to a multiple and border effects are included)."""
    h, w = (int(s) for s in size)
    return count_macs(model, (h, w), channels) / (h * w / 1e6)


def typical_width(by_width: Counter) -> int:
    """The ``Conv2D`` output width that does the most multiply-adds (``by_width`` of ``count_macs``):
    the width at which to measure a machine's convolution peak for this network."""
    if not by_width:
        raise ValueError("the network has no Conv2D op")
    return max(by_width.items(), key=lambda kv: (kv[1], kv[0]))[0]
