"""Inference precision (``--precision`` of ``derain``, ``evaluate`` and ``export``).

* ``float32``: the networks as trained (default).
* ``bfloat16``: the inference network rebuilt under Keras' ``mixed_bfloat16`` dtype policy (the one
  training's ``--mixed_precision`` uses on a CPU: bfloat16 compute, float32 variables) with the
  float32 network's weights copied in (``in_precision``). Inputs and outputs stay float32
  (``InferenceModel`` casts and clips), so every caller is unchanged.

bfloat16 is only faster where the hardware computes in it: a GPU, or a CPU with AVX512_BF16 or
AMX_BF16 (x86; Arm: BF16). Elsewhere TensorFlow emulates it, slower than float32, so
``bfloat16_unavailable`` names the missing CPU feature and the command refuses it. The features are
read from ``/proc/cpuinfo`` (Linux); where there is none they cannot be checked, and that is said.
"""

from __future__ import annotations

import platform

PRECISIONS = ("float32", "bfloat16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 (AVX-512, AMX); Arm's "Features" line: bf16
POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (the ``flags`` / Arm ``Features`` lines of ``/proc/cpuinfo``), or
    None where that file cannot be read (not Linux)."""
    try:
        with open(path) as f:
            found = set()
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    found.update(value.split())
            return found
    except OSError:
        return None


def _gpus() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def bfloat16_unavailable() -> str | None:
    """Why bfloat16 inference would not run on bfloat16 hardware here (one line), or None: with a
    GPU, or a CPU that has AVX512_BF16 / AMX_BF16 (Arm: BF16)."""
    if _gpus():
        return None
    flags = cpu_flags()
    if flags is None:
        return (f"this CPU's features cannot be checked on {platform.system() or 'this system'} (no /proc/cpuinfo) "
                "and there is no GPU; bfloat16 needs AVX512_BF16 or AMX_BF16 (x86) or BF16 (Arm)")
    if flags & set(BF16_CPU_FLAGS):
        return None
    return ("this CPU lacks AVX512_BF16 and AMX_BF16 (Arm: BF16) and there is no GPU: TensorFlow would emulate "
            "bfloat16, slower than float32; use --precision=float32")


def in_precision(trainer, record, precision: str):
    """``trainer`` for ``float32``; for ``bfloat16`` a twin built from ``record`` under the
    ``mixed_bfloat16`` policy with ``trainer``'s weights (every network) and progress (the inference
    network can depend on the stage reached). The global policy is restored afterwards."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision={precision}: one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return trainer
    import keras

    from erl_derain.methods import make_trainer

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(POLICY[precision])
    try:
        twin = make_trainer(record)
        twin.build_networks()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    mine, theirs = trainer.networks(), twin.networks()
    if set(mine) != set(theirs):
        raise ValueError(f"the {precision} rebuild has networks {sorted(theirs)}, the run {sorted(mine)}")
    for name, network in mine.items():
        theirs[name].set_weights(network.get_weights())
    if trainer.progress is not None:
        twin.set_progress(*trainer.progress)
    return twin
