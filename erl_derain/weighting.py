"""Task weighting for multi-task losses: fixed weights, MENET's gradient balance (GB, Algorithm 1)
and loss balance (LB, Algorithm 2).  Usable by any trainer; selected by ``--task_weighting``.

The total loss is ``L = sum_t w_t L_t`` (MENET Eq. 2) over named task losses ``{name: scalar}``
(e.g. :func:`erl_derain.losses.task_losses`).  For the dynamic modes the weights are recomputed every
step from that step's batch and are treated as constants (``tf.stop_gradient``), as in the authors'
code (SumiHui/MENET ``heavy/template/*_gradbalance.py`` / ``*_lossbalance.py``):

* ``fixed``: ``w_t`` = the given weight (``fixed[name]``, default 1.0 for a task not listed).
  MENET's authors use ``L_p + 0.01 L_e`` for their fixed runs.
* ``gb`` (Algorithm 1): ``g_t = ||dL_t / dW_shared||_2`` where ``W_shared`` is the kernel of the
  network's last shared convolution (for MENET the final conv; the authors take
  ``trainable_variables(scope="derain/layer5")``, that conv's bias-free kernel).  The per-task
  gradients are taken with respect to that variable only (cheap inside ``tf.function``, where the
  rest of each backward pass is pruned; an eager tape walks the whole network), one
  ``tape.gradient(L_t, shared)`` per task, so **the tape must be persistent**
  (``tf.GradientTape(persistent=True)``; a non-persistent tape raises ValueError).  Then
  ``w_t = 1 - g_t / S`` with ``S = sum_j g_j``.  ``shared`` may also be a list of variables, in which
  case ``g_t`` is their global norm.  A task whose loss does not depend on ``shared`` has ``g_t = 0``.
* ``lb`` (Algorithm 2): ``w_t = 1 - L_t / S`` with ``S = sum_j L_j``.

Arithmetic (``arithmetic=``, ``--gb_arithmetic``; GB and LB alike):

* ``"authors"`` (default): ``1 - v_t / S`` in float32, as the authors' graph computes it.  When one
  task dominates (MENET's texture term on [0, 255] images: ``g_t`` about 4e9 against 4 and 65) its
  share ``v_t / S`` rounds to exactly 1 and its weight to exactly 0, and the other weights to exactly
  1: what the authors optimised, and so what produced the published tables, was ``L_p + L_e``.
* ``"stable"``: ``w_t = (sum_{j != t} v_j) / S``, the same number in exact arithmetic but without the
  cancellation: the dominant task keeps its small weight (about 1.8e-8 for MENET's texture term),
  which is the paper's intent.

With ``T`` tasks the GB/LB weights sum to ``T - 1``; with a single task they would be 0, so
``T < 2`` raises ValueError (naming ``--task_weighting`` and ``--tasks``).  When the denominator is
0 (every gradient norm, or every loss, is zero) the weights are the equal weights ``1 - 1/T`` (what
the formula gives for equal shares).  A non-finite norm or loss is never hidden: the weights are then
NaN, so the step's logged loss and weights are NaN and the training loop's guard (``--on_nan``)
stops (naming the step, the batch and the values) or skips the batch.

Mixed precision: under ``mixed_float16`` a large loss (MENET's texture term on [0, 255] images) can
overflow float16 on its way back to ``shared``.  Each norm is therefore taken of the gradient of the
*normalised* loss ``L_t * c_t`` with ``c_t = 2^-floor(log2 |L_t|)`` (``L_t c_t`` in [1, 2); seeded as
``output_gradients``) and divided by ``c_t`` in float32.  ``c_t`` is a power of two, so in float32 the
norm is exactly the unscaled one (the losses themselves should be float32, as every loss of
:mod:`erl_derain.losses` on a float32 network output is).

Under ``tf.distribute`` the weights are computed per replica from the replica's own batch (the
authors trained on one GPU) and averaged over the replicas; the ratios do not depend on a
replica-count scaling of the losses.

A train step (eager or inside ``tf.function``)::

    weighting = TaskWeighting("gb", tasks=("p", "e", "t"))
    with tf.GradientTape(persistent=weighting.needs_persistent_tape) as tape:
        output = model(rainy, training=True)
        task_loss = losses.task_losses(("p", "e", "t"), clean, output)
    w = weighting.weights(task_loss, tape=tape, shared=model.last_conv.kernel)   # after the with-block
    total = weighted_total(task_loss, w)                                          # for logging
    grads = apply_weighted_gradients(tape, task_loss, w, model.trainable_variables, optimizer=opt)
    del tape

:func:`apply_weighted_gradients` takes ONE backward pass,
``tape.gradient([L_1..L_T], variables, output_gradients=[w_1..w_T])``, which equals the gradient of
``sum_t w_t L_t`` (the weights being constants); so the total need not be recorded on the tape.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Union

import tensorflow as tf

from erl_derain.distribute import replica_mean

__all__ = [
    "MODES",
    "ARITHMETICS",
    "TaskWeighting",
    "parse_task_weights",
    "weighted_total",
    "apply_weighted_gradients",
]

MODES = ("fixed", "gb", "lb")
ARITHMETICS = ("authors", "stable")

_MODE_FLAG = "--task_weighting"
_TASKS_FLAG = "--tasks"
_WEIGHTS_FLAG = "--task_weights"
_ARITHMETIC_FLAG = "--gb_arithmetic"


def parse_task_weights(spec: Union[str, Mapping[str, float], None], flag: str = _WEIGHTS_FLAG) -> Dict[str, float]:
    """``"p=1,e=0.01"`` (or a mapping, or None/"") -> ``{"p": 1.0, "e": 0.01}``.

    Weights must be finite and non-negative (MENET Eq. 2); a malformed item raises ValueError naming
    ``flag``."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"{flag}: expected items like 'p=1,e=0.01', got {part!r}")
            items.append((name.strip(), value.strip()))
    out: Dict[str, float] = {}
    for name, value in items:
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{flag}: weight of task {name!r} is not a number: {value!r}") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"{flag}: weight of task {name!r} must be finite and >= 0, got {w}")
        if name in out:
            raise ValueError(f"{flag}: task {name!r} is given twice")
        out[str(name)] = w
    return out


def _balance_weights(values: tf.Tensor, count: int, arithmetic: str) -> tf.Tensor:
    """GB/LB weights from the stacked float32 ``values`` (norms or losses), see the module docstring:
    ``1 - v_t / S`` ("authors") or ``sum_{j != t} v_j / S`` ("stable"); ``1 - 1/T`` everywhere when
    ``S`` is 0; NaN everywhere when a value is not finite."""
    parts = tf.unstack(values, num=count)
    denom = parts[0]
    for v in parts[1:]:  # S = v_1 + v_2 + ..., left to right as the authors' G1 + G2 + G3
        denom = denom + v
    safe = tf.where(denom > 0, denom, tf.ones_like(denom))
    if arithmetic == "authors":
        w = 1.0 - values / safe
    else:
        others = []
        for i in range(count):
            rest = [parts[j] for j in range(count) if j != i]
            acc = rest[0]
            for v in rest[1:]:
                acc = acc + v
            others.append(acc)
        w = tf.stack(others) / safe
    equal = tf.fill(tf.shape(values), tf.constant(1.0 - 1.0 / count, values.dtype))
    w = tf.where(denom > 0, w, equal)
    finite = tf.reduce_all(tf.math.is_finite(values))
    return tf.where(finite, w, tf.fill(tf.shape(values), tf.constant(float("nan"), values.dtype)))


def _normaliser(loss: tf.Tensor) -> tf.Tensor:
    """``c = 2^-floor(log2 |loss|)`` in float32 (1 for a zero or non-finite loss), so that ``loss * c``
    lies in [1, 2). Built from its bits, so it is an exact power of two (exponent clipped to +-100)."""
    magnitude = tf.abs(tf.cast(loss, tf.float32))
    usable = tf.math.is_finite(magnitude) & (magnitude > 0)
    exponent = tf.math.floor(tf.math.log(tf.where(usable, magnitude, 1.0)) / math.log(2.0))
    # (log() may land one off at an exact power of two: c is then 2x off [1, 2), still exact)
    exponent = tf.where(usable, tf.clip_by_value(exponent, -100.0, 100.0), 0.0)
    bits = tf.cast(127.0 - exponent, tf.int32) * (1 << 23)  # IEEE-754 float32 with mantissa 0
    return tf.bitcast(bits, tf.float32)


def _global_norm(grads) -> tf.Tensor:
    squares = [tf.reduce_sum(tf.square(tf.cast(tf.convert_to_tensor(g), tf.float32))) for g in grads if g is not None]
    if not squares:
        return tf.constant(0.0, tf.float32)
    return tf.sqrt(tf.add_n(squares))


class TaskWeighting:
    """Per-step task weights for ``sum_t w_t L_t``.

    Args:
      mode: ``"fixed"``, ``"gb"`` or ``"lb"`` (``--task_weighting``); anything else -> ValueError.
      fixed: per-task weights for ``mode="fixed"`` (a mapping or a ``"p=1,e=0.01"`` string); tasks not
        listed get 1.0.  Ignored by ``gb``/``lb``.
      tasks: optional task names (a sequence or a ``"p,e,t"`` string), checked at construction
        (``T >= 2`` for gb/lb; every name in ``fixed`` must be a task) so that a bad command line
        fails before training starts.
      arithmetic: ``"authors"`` (``1 - v_t / S`` in float32) or ``"stable"`` (``sum_{j != t} v_j / S``)
        for gb and lb (``--gb_arithmetic``; see the module docstring).
    """

    def __init__(self, mode: str = "fixed", fixed: Union[Mapping[str, float], str, None] = None,
                 tasks: Optional[Sequence[str]] = None, arithmetic: str = "authors", flag_prefix: str = ""):
        # the flags a caller's settings come from, named in errors (``flag_prefix``: its method's prefix)
        self._flags = {k: f"--{flag_prefix}{v[2:]}" for k, v in (("mode", _MODE_FLAG), ("tasks", _TASKS_FLAG),
                                                                    ("weights", _WEIGHTS_FLAG),
                                                                    ("arithmetic", _ARITHMETIC_FLAG))}
        mode = str(mode).strip().lower()
        if mode not in MODES:
            raise ValueError(f"{self._flags['mode']} must be one of {'|'.join(MODES)}, got {mode!r}")
        arithmetic = str(arithmetic).strip().lower()
        if arithmetic not in ARITHMETICS:
            raise ValueError(f"{self._flags['arithmetic']} must be one of {'|'.join(ARITHMETICS)} (authors: 1 - v_t / S in "
                             f"float32 as their code; stable: the other tasks' sum over S), got {arithmetic!r}")
        self.arithmetic = arithmetic
        self.mode = mode
        self.fixed: Dict[str, float] = parse_task_weights(fixed, flag=self._flags["weights"])
        if isinstance(tasks, str):  # a flag value such as "p,e,t"
            tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        self.tasks = tuple(tasks) if tasks is not None else None
        if self.tasks is not None:
            self.check_tasks(self.tasks)

    def __repr__(self) -> str:
        extra = f", fixed={self.fixed}" if self.mode == "fixed" and self.fixed else ""
        if self.dynamic:
            extra += f", arithmetic={self.arithmetic!r}"
        return f"TaskWeighting({self.mode!r}{extra})"

    @property
    def dynamic(self) -> bool:
        """True for GB/LB (weights change every step)."""
        return self.mode != "fixed"

    @property
    def needs_persistent_tape(self) -> bool:
        """GB takes one gradient per task plus the update's: the tape must be persistent."""
        return self.mode == "gb"

    def check_tasks(self, tasks: Sequence[str]) -> None:
        tasks = list(tasks)
        mode_flag, tasks_flag = self._flags["mode"], self._flags["tasks"]
        if self.dynamic and len(tasks) < 2:
            raise ValueError(
                f"{mode_flag}={self.mode} needs at least two tasks ({tasks_flag} names {len(tasks)}: "
                f"{tasks}); with one task its weight 1 - L/L would be 0. Use {mode_flag}=fixed or add tasks "
                f"to {tasks_flag}")
        if self.mode == "fixed":
            unknown = sorted(set(self.fixed) - set(tasks))
            if unknown:
                raise ValueError(f"{self._flags['weights']} names task(s) {unknown} not in "
                                 f"{tasks_flag}={','.join(tasks)}")

    def weights(self, losses: Mapping[str, tf.Tensor], *, tape: Optional[tf.GradientTape] = None,
                shared: Union[tf.Variable, Sequence[tf.Variable], None] = None) -> Dict[str, tf.Tensor]:
        """The weights ``{name: scalar float32}`` for this step, all ``tf.stop_gradient``-ed.

        ``tape`` (persistent, the one that recorded the losses) and ``shared`` (the last shared
        kernel, or a list of variables) are needed by ``gb`` only; call this after leaving the tape's
        ``with`` block so the per-task gradients are not themselves recorded."""
        names = list(losses)
        if not names:
            raise ValueError("no task losses given")
        if self.mode == "fixed":
            return {n: tf.constant(self.fixed.get(n, 1.0), tf.float32) for n in names}
        self.check_tasks(names)
        count = len(names)
        if self.mode == "lb":
            values = tf.stack([tf.cast(tf.convert_to_tensor(losses[n]), tf.float32) for n in names])
        else:
            values = tf.stack(self.gradient_norms(losses, tape=tape, shared=shared))
        values = tf.stop_gradient(values)
        w = tf.stop_gradient(_balance_weights(values, count, self.arithmetic))
        w = replica_mean(w)  # under tf.distribute: each replica's weights from its own batch, averaged
        return {n: w[i] for i, n in enumerate(names)}

    @staticmethod
    def gradient_norms(losses: Mapping[str, tf.Tensor], *, tape: Optional[tf.GradientTape],
                       shared: Union[tf.Variable, Sequence[tf.Variable], None]) -> List[tf.Tensor]:
        """``[||dL_t / d shared||_2 for t in losses]`` (GB's ``g_t``, float32), one ``tape.gradient`` per
        task, each of the normalised loss ``L_t c_t`` and divided by ``c_t`` (see the module docstring)."""
        if tape is None:
            raise ValueError(f"{_MODE_FLAG}=gb needs the GradientTape that recorded the losses (tape=...)")
        if shared is None:
            raise ValueError(f"{_MODE_FLAG}=gb needs the last shared convolution's kernel (shared=...)")
        if getattr(tape, "_persistent", True) is False:
            raise ValueError(f"{_MODE_FLAG}=gb takes one gradient per task: record the losses with "
                             "tf.GradientTape(persistent=True)")
        sources = list(shared) if isinstance(shared, (list, tuple)) else [shared]
        norms = []
        for n in losses:
            loss = tf.convert_to_tensor(losses[n])
            c = tf.stop_gradient(_normaliser(loss))
            grads = tape.gradient(loss, sources, output_gradients=tf.cast(c, loss.dtype))
            norms.append(_global_norm(grads) / c)
        return norms


def weighted_total(losses: Mapping[str, tf.Tensor], weights: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """``sum_t w_t L_t`` over the names of ``losses`` (each must have a weight)."""
    missing = [n for n in losses if n not in weights]
    if missing:
        raise KeyError(f"no weight for task(s) {missing}")
    terms = []
    for n in losses:
        loss = tf.convert_to_tensor(losses[n])
        terms.append(tf.cast(weights[n], loss.dtype) * loss)
    if not terms:
        raise ValueError("no task losses given")
    return tf.add_n(terms)


def apply_weighted_gradients(tape: tf.GradientTape, losses: Mapping[str, tf.Tensor],
                             weights: Mapping[str, tf.Tensor], variables: Sequence, *,
                             optimizer=None) -> List[Optional[tf.Tensor]]:
    """Gradients of ``sum_t w_t L_t`` with respect to ``variables`` in ONE backward pass.

    ``tape.gradient([L_t], variables, output_gradients=[w_t])``, which equals the gradient of the
    weighted total because the weights are constants.  Returns the list of gradients (``None`` for a
    variable no loss depends on, as ``tape.gradient`` does).  With ``optimizer`` given, also calls
    ``optimizer.apply_gradients`` on the (gradient, variable) pairs whose gradient is not None.
    """
    missing = [n for n in losses if n not in weights]
    if missing:
        raise KeyError(f"no weight for task(s) {missing}")
    names = list(losses)
    targets = [tf.convert_to_tensor(losses[n]) for n in names]
    seeds = [tf.broadcast_to(tf.cast(tf.stop_gradient(weights[n]), t.dtype), tf.shape(t))
             for n, t in zip(names, targets)]
    variables = list(variables)
    grads = tape.gradient(targets, variables, output_gradients=seeds)
    if optimizer is not None:
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if pairs:
            optimizer.apply_gradients(pairs)
    return list(grads)
