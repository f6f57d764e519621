"""Task weighting for multi-task losses: fixed weights, MENET's gradient balance (GB, Algorithm 1)
and loss balance (LB, Algorithm 2).  Usable by any trainer; selected by ``--task_weighting``.

The total loss is ``L = sum_t w_t L_t`` (MENET Eq. 2) over named task losses ``{name: scalar}``
(e.g. :func:`erl_derain.losses.task_losses`).  For the dynamic modes the weights are recomputed every
step from that step's batch and are treated as constants (``tf.stop_gradient``), as in the authors'
code (SumiHui/MENET ``*_gradbalance.py`` / ``*_lossbalance.py``):

* ``fixed``: ``w_t`` = the given weight (``fixed[name]``, default 1.0 for a task not listed).
  MENET's authors use ``L_p + 0.01 L_e`` for their fixed runs.
* ``gb`` (Algorithm 1): ``g_t = ||dL_t / dW_shared||_2`` where ``W_shared`` is the kernel of the
  network's last shared convolution (for MENET the final conv; the authors take
  ``trainable_variables(scope="derain/layer5")``, that conv's bias-free kernel).  The per-task
  gradients are taken with respect to that variable only (cheap: back-propagation stops at the last
  layer), one ``tape.gradient(L_t, shared)`` per task, so **the tape must be persistent**
  (``tf.GradientTape(persistent=True)``; a non-persistent tape raises ValueError).  Then
  ``w_t = 1 - g_t / sum_j g_j``.  ``shared`` may also be a list of variables, in which case
  ``g_t`` is their global norm.  A task whose loss does not depend on ``shared`` has ``g_t = 0``.
* ``lb`` (Algorithm 2): ``w_t = 1 - L_t / sum_j L_j``.

With ``T`` tasks the GB/LB weights sum to ``T - 1``; with a single task they would be 0, so
``T < 2`` raises ValueError (naming ``--task_weighting`` and ``--tasks``).  When the denominator is
0 (every gradient norm, or every loss, is zero) the weights fall back to the equal weights
``1 - 1/T`` (what the formula gives for equal shares), never NaN.

Under ``tf.distribute`` the weights are computed per replica from the replica's own batch (the
authors trained on one GPU); the ratios do not depend on a replica-count scaling of the losses.

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
    "TaskWeighting",
    "parse_task_weights",
    "weighted_total",
    "apply_weighted_gradients",
]

MODES = ("fixed", "gb", "lb")

_MODE_FLAG = "--task_weighting"
_TASKS_FLAG = "--tasks"
_WEIGHTS_FLAG = "--task_weights"


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


def _equal_share_weights(ratios: tf.Tensor, denom: tf.Tensor, count: int) -> tf.Tensor:
    """``1 - ratios``, or ``1 - 1/T`` everywhere when ``denom`` is zero."""
    fallback = tf.fill(tf.shape(ratios), tf.constant(1.0 - 1.0 / count, ratios.dtype))
    return tf.where(denom > 0, 1.0 - ratios, fallback)


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
    """

    def __init__(self, mode: str = "fixed", fixed: Union[Mapping[str, float], str, None] = None,
                 tasks: Optional[Sequence[str]] = None):
        mode = str(mode).strip().lower()
        if mode not in MODES:
            raise ValueError(f"{_MODE_FLAG} must be one of {'|'.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.fixed: Dict[str, float] = parse_task_weights(fixed)
        if isinstance(tasks, str):  # a flag value such as "p,e,t"
            tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        self.tasks = tuple(tasks) if tasks is not None else None
        if self.tasks is not None:
            self.check_tasks(self.tasks)

    def __repr__(self) -> str:
        extra = f", fixed={self.fixed}" if self.mode == "fixed" and self.fixed else ""
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
        if self.dynamic and len(tasks) < 2:
            raise ValueError(
                f"{_MODE_FLAG}={self.mode} needs at least two tasks ({_TASKS_FLAG} names {len(tasks)}: "
                f"{tasks}); with one task its weight 1 - L/L would be 0. Use {_MODE_FLAG}=fixed or add tasks "
                f"to {_TASKS_FLAG}")
        if self.mode == "fixed":
            unknown = sorted(set(self.fixed) - set(tasks))
            if unknown:
                raise ValueError(f"{_WEIGHTS_FLAG} names task(s) {unknown} not in {_TASKS_FLAG}={','.join(tasks)}")

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
        denom = tf.reduce_sum(values)
        w = tf.stop_gradient(_equal_share_weights(tf.math.divide_no_nan(values, denom), denom, count))
        w = replica_mean(w)  # under tf.distribute: each replica's weights from its own batch, averaged
        return {n: w[i] for i, n in enumerate(names)}

    @staticmethod
    def gradient_norms(losses: Mapping[str, tf.Tensor], *, tape: Optional[tf.GradientTape],
                       shared: Union[tf.Variable, Sequence[tf.Variable], None]) -> List[tf.Tensor]:
        """``[||dL_t / d shared||_2 for t in losses]`` (GB's ``g_t``), one ``tape.gradient`` per task."""
        if tape is None:
            raise ValueError(f"{_MODE_FLAG}=gb needs the GradientTape that recorded the losses (tape=...)")
        if shared is None:
            raise ValueError(f"{_MODE_FLAG}=gb needs the last shared convolution's kernel (shared=...)")
        if getattr(tape, "_persistent", True) is False:
            raise ValueError(f"{_MODE_FLAG}=gb takes one gradient per task: record the losses with "
                             "tf.GradientTape(persistent=True)")
        sources = list(shared) if isinstance(shared, (list, tuple)) else [shared]
        return [_global_norm(tape.gradient(losses[n], sources)) for n in losses]


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
