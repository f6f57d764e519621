"""The training loop every method shares.

One loop drives each trainer's ``train_step`` (the contract of :mod:`erl_derain.methods.base`)
through its stages, as TF Model Garden's Orbit does, instead of Keras' ``fit`` (which fails under
MultiWorkerMirroredStrategy): one path for every tf.distribute strategy (the default strategy is one
replica), with hooks for the progress bar, TensorBoard summaries, checkpoints, the NaN guard and the
learning-rate rule, so that a re-run of the same command resumes at the stage, step and data
position where the last run stopped.

``--model_dir`` layout::

    config.json        every setting of the run (erl_derain.run_config: method, shared settings, the method's)
    flags.txt          the same as an absl flagfile (``erl-derain train --flagfile=<model_dir>/flags.txt``)
    checkpoints/       tf.train.Checkpoint: networks, one optimizer per stage, stage, step, LR-plateau state
    logs/              TensorBoard event files (losses, learning rate)

The folder may be local or a file-system URL (``gs://bucket/run``; ``ram://`` in the tests): the
checkpoints and summaries are TensorFlow's own (``tf.io.gfile`` underneath), everything else goes
through :mod:`erl_derain.fileio` (what is atomic on which file system is said there).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from erl_derain import distribute, fileio


class TrainingError(RuntimeError):
    """Training cannot go on (bad configuration, a non-finite loss, ...); the message says why."""


def resolve_jit_compile(value: str | bool) -> bool:
    """``auto`` means XLA on GPU and off on CPU, where it makes a U-Net step about 7x slower."""
    if isinstance(value, bool):
        return value
    value = str(value).lower()
    if value == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError(f"--jit_compile must be auto, true or false, got {value!r}")


def learning_rate_of(optimizer) -> float:
    """The optimizer's current learning rate (also when its variable is mirrored by a strategy)."""
    return float(tf.convert_to_tensor(optimizer.learning_rate))


from erl_derain.fileio import atomic_write_text  # noqa: E402,F401  (the shared helper; kept importable here)


def read_config(model_dir: str):
    """The :class:`erl_derain.run_config.RunRecord` of ``model_dir`` (any release's config.json)."""
    from erl_derain.run_config import read_record

    return read_record(model_dir)


def as_record(config):
    """A RunRecord from a record or a flat dict of settings (``{"method": ..., <flag>: value}``)."""
    from erl_derain.run_config import RunRecord, record_from_dict

    return config if isinstance(config, RunRecord) else record_from_dict(dict(config), where="settings")


class StepSchedule:
    """Piecewise-constant learning rate within a stage: ``base * factor**k`` after ``k`` boundaries
    (stage steps), e.g. MENET's Adam 1e-3 divided by 10 at epochs 40 and 80. A pure function of the
    step, so a resumed run continues on the same schedule."""

    def __init__(self, base_lr: float, boundaries, factor: float = 0.1):
        self.base_lr, self.factor = float(base_lr), float(factor)
        self.boundaries = sorted(int(b) for b in boundaries)
        if any(b < 1 for b in self.boundaries):
            raise TrainingError(f"learning-rate decay boundaries must be positive steps, got {self.boundaries}")

    def __call__(self, step: int) -> float:
        """Learning rate of (1-based) step ``step``: the first step after a boundary is decayed."""
        return self.base_lr * self.factor ** sum(step > b for b in self.boundaries)


class LinearDecaySchedule:
    """Constant, then linear decay to zero, per epoch (the pix2pix / CycleGAN "linear" policy): the
    learning rate of (1-based) epoch ``e`` of a stage is
    ``base * max(0, 1 - max(0, e + offset - constant_epochs) / (decay_epochs + 1))``.
    ``offset=1`` is that rule applied at the start of every epoch (the scheduler stepped before the
    epoch's first batch, starting epoch 1): epochs ``1 .. constant_epochs - 1`` at ``base``, then
    ``1 - 1/(D + 1), 1 - 2/(D + 1), ...``, epoch ``constant_epochs + decay_epochs`` at 0. ``offset=0``
    steps it at the end of every epoch (``constant_epochs`` full epochs, the last at ``base / (D + 1)``).
    Stage step ``s`` (1-based) is in epoch ``floor((s - 1) / steps_per_epoch) + 1``. A pure function of
    the step, so a resumed run continues on the same schedule."""

    def __init__(self, base_lr: float, constant_epochs: int, decay_epochs: int, steps_per_epoch: float,
                 offset: int = 1):
        self.base_lr = float(base_lr)
        self.constant_epochs, self.decay_epochs, self.offset = int(constant_epochs), int(decay_epochs), int(offset)
        self.steps_per_epoch = float(steps_per_epoch)
        if self.constant_epochs < 0 or self.decay_epochs < 0:
            raise TrainingError(f"linear decay needs epochs >= 0, got {self.constant_epochs} constant and "
                                f"{self.decay_epochs} decay epochs")
        if not self.steps_per_epoch > 0:
            raise TrainingError(f"linear decay needs a positive number of steps per epoch, got {steps_per_epoch}")

    def epoch_of(self, step: int) -> int:
        return int(math.floor((int(step) - 1) / self.steps_per_epoch + 1e-9)) + 1

    def __call__(self, step: int) -> float:
        """Learning rate of (1-based) stage step ``step``."""
        e = self.epoch_of(step)
        factor = 1.0 - max(0, e + self.offset - self.constant_epochs) / float(self.decay_epochs + 1)
        return self.base_lr * max(0.0, factor)


class PlateauSchedule(tf.Module):
    """Divide the learning rate by ``1/factor`` when the training loss plateaus (paper: lr 4e-4,
    "divided by 10 when the losses plateau"). The loss is averaged over windows of ``window``
    steps; a window that does not improve on the best by a relative ``min_delta`` counts towards
    ``patience``. State lives in variables so that it is checkpointed and survives a resume."""

    def __init__(self, window: int = 500, patience: int = 5, factor: float = 0.1,
                 min_lr: float = 1e-7, min_delta: float = 1e-3):
        super().__init__(name="plateau")
        self.window, self.patience, self.factor = int(window), int(patience), float(factor)
        self.min_lr, self.min_delta = float(min_lr), float(min_delta)
        self.best = tf.Variable(np.inf, dtype=tf.float64, trainable=False, name="best")
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="wait")
        self.window_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="window_sum")
        self.window_count = tf.Variable(0, dtype=tf.int64, trainable=False, name="window_count")

    def reset(self):
        self.best.assign(np.inf)
        self.wait.assign(0)
        self.window_sum.assign(0.0)
        self.window_count.assign(0)

    def update(self, loss: float, optimizer) -> float | None:
        """Record one step's loss; returns the new learning rate when it was reduced."""
        if self.window <= 0:
            return None
        self.window_sum.assign_add(float(loss))
        self.window_count.assign_add(1)
        if int(self.window_count) < self.window:
            return None
        mean = float(self.window_sum) / int(self.window_count)
        self.window_sum.assign(0.0)
        self.window_count.assign(0)
        if mean < float(self.best) * (1.0 - self.min_delta):
            self.best.assign(mean)
            self.wait.assign(0)
            return None
        self.wait.assign_add(1)
        if int(self.wait) < self.patience:
            return None
        self.wait.assign(0)
        lr = learning_rate_of(optimizer)
        new_lr = max(lr * self.factor, self.min_lr)
        if new_lr < lr:
            optimizer.learning_rate.assign(new_lr)
            return new_lr
        return None


def _checkpointable(item):
    """Keras 3 models are not tracked by ``tf.train.Checkpoint`` through their sub-layers (only the
    optimizers reference their variables), so a network is checkpointed as a dict of its variables
    keyed by their paths (stable: every layer with weights has an explicit name)."""
    if isinstance(item, keras.Layer):
        variables = {}
        for v in item.weights:
            if v.path in variables:
                raise TrainingError(f"two variables of {item.name} share the path {v.path}: name the layers")
            variables[v.path] = v
        return variables
    return item


class StateBackup:
    """A copy of every network and optimizer variable of a trainer, taken before each step so that a
    step whose loss is not finite can be undone (``--on_nan=skip_batch``; costs one copy of the state)."""

    def __init__(self, trainer):
        self.variables = []
        for item in trainer.checkpoint_items().values():
            if isinstance(item, tf.Variable):  # a trainer's own counter (e.g. one that keys its random draws)
                self.variables.append(item)
            else:
                self.variables += list(item.weights if isinstance(item, keras.Layer) else item.variables)
        # State a step changes that is not checkpointed (e.g. image pools refilled on resume)
        self.variables += list(getattr(trainer, "step_state_variables", lambda: [])())
        self.copies = [tf.Variable(v, trainable=False) for v in self.variables]
        self.save = tf.function(lambda: [c.assign(v) for c, v in zip(self.copies, self.variables)] and None)
        self.restore = tf.function(lambda: [v.assign(c) for c, v in zip(self.copies, self.variables)] and None)


class Run:
    """A ``--model_dir``: its saved configuration and its checkpoint of a trainer."""

    def __init__(self, model_dir: str, trainer, keep_checkpoints: int = 3, plateau: PlateauSchedule | None = None,
                 chief: bool = True):
        self.model_dir = model_dir
        self.chief = chief
        self.trainer = trainer
        self.stage = tf.Variable(0, dtype=tf.int64, trainable=False, name="stage")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")  # within the stage
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.plateau = plateau or PlateauSchedule()
        self.checkpoint = tf.train.Checkpoint(stage=self.stage, step=self.step, global_step=self.global_step,
                                              plateau=self.plateau,
                                              **{k: _checkpointable(v) for k, v in trainer.checkpoint_items().items()})
        self.manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(model_dir, "checkpoints"),
                                                  max_to_keep=keep_checkpoints, checkpoint_name="ckpt")
        self._saved_at = None  # (stage, step, global step) of the last checkpoint this Run wrote

    def restore(self, networks_only: bool = False, built_from: str | None = None) -> str | None:
        """Restore the newest readable checkpoint. A checkpoint whose files are torn or missing (a
        crash of the machine mid-write; TF writes the index only after the data) is passed over for
        the previous one, with a warning; one that does not match the network is an error (``built_from``
        says where the network's sizes came from; default: this run's config.json)."""
        candidates = list(reversed(self.manager.checkpoints))
        for i, path in enumerate(candidates):
            try:
                if networks_only:
                    tf.train.Checkpoint(**{k: _checkpointable(v) for k, v in self.trainer.checkpoint_items().items()
                                           if not k.startswith("optimizer")}).read(path).expect_partial() \
                        .assert_existing_objects_matched()
                else:
                    self.checkpoint.read(path).assert_existing_objects_matched()
                return path
            except (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.OutOfRangeError, IndexError) as e:
                if i + 1 == len(candidates):
                    raise TrainingError(f"no readable checkpoint in {self.manager.directory}: the last one tried, "
                                        f"{path}, is damaged ({str(e)[:300]})") from e
                logging.warning("checkpoint %s is damaged (%s); trying the previous one", path, str(e)[:200])
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                raise TrainingError(f"checkpoint {path} does not match the network built from "
                                    f"{built_from or os.path.join(self.model_dir, 'config.json')}: {str(e)[:500]}") from e
        return None

    def save(self) -> str | None:
        """Write a checkpoint (the chief), or under multi-worker training on another worker take part in
        the save (it may run collective ops) into a private temporary folder that is then removed.
        A checkpoint this Run just wrote at the same stage, step and global step is not written again
        (--stop_after on a --checkpoint_every step): a checkpoint is never rewritten under its own
        name, which TensorFlow's ram:// file system would corrupt (it appends to a file written
        again instead of replacing it). Every worker decides alike (the counters are the same)."""
        at = (int(self.stage), int(self.step), int(self.global_step))
        if at == self._saved_at:
            return self.manager.latest_checkpoint if self.chief else None
        path = None
        if self.chief:
            path = self.manager.save(checkpoint_number=int(self.global_step))
        else:
            tmp = tempfile.mkdtemp(prefix="erl_derain_worker_ckpt_")
            try:
                self.checkpoint.write(os.path.join(tmp, "ckpt"))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self._saved_at = at
        return path


class SettingsMismatch(TrainingError):
    """Changed settings that do not fit the checkpoint of a ``--model_dir`` (nothing in it was changed)."""


def changed_settings(old, new) -> dict:
    """``{"--flag": (old value, new value)}`` of the settings that differ between two RunRecords
    (``RunRecord.differences`` by flag name)."""
    from erl_derain import config as cfglib
    from erl_derain.run_config import RunConfig

    names = {f"run.{f}": n for f, n in cfglib.flag_names(RunConfig).items()}
    prefix = new.spec.flag_prefix
    out = {}
    for key, values in old.differences(new).items():
        section, _, name = key.partition(".")
        flag = names.get(key) or (f"{prefix}{name}" if section == "method_config" else key)
        out[f"--{flag}"] = values
    return out


def _format_changes(changes: dict) -> str:
    def show(v):
        return ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)

    return "\n".join(f"  {flag}: {show(a)} (the run's) -> {show(b)} (now)" for flag, (a, b) in sorted(changes.items()))


def prepare_model_dir(model_dir: str, record, *, force_new_config: bool = False) -> dict:
    """Check ``model_dir`` before anything in it changes: a run of another method is refused unless
    ``force_new_config``. Returns ``{"--flag": (old, new)}`` of the settings that changed against its
    ``config.json`` (empty for a new run). Writes nothing: the loop writes the config
    (``write_record``) once the checkpoint is known to fit the new settings; with
    ``force_new_config`` the run found there is first moved aside (``set_aside_run``)."""
    config = os.path.join(model_dir, "config.json")
    if not fileio.exists(config):
        return {}
    old = read_config(model_dir)
    if old.method != record.method and not force_new_config:
        raise SettingsMismatch(f"--model_dir={model_dir} holds a run of method {old.method!r}, not "
                               f"{record.method!r}: choose another --model_dir (or --force_new_config to start a "
                               f"new run there, the old one moved into a sub-folder)")
    return changed_settings(old, record) if old.method == record.method else {"--method": (old.method, record.method)}


def set_aside_run(model_dir: str) -> str | None:
    """Move the run in ``model_dir`` (everything but earlier set-aside runs) into
    ``<model_dir>/previous_run_<n>/``, a run folder of its own (evaluate / export / resume it there);
    returns that folder, or None when there was nothing to move. Each entry is moved with one rename
    on a local disk; on a file-system URL file by file (``fileio.move``)."""
    if not fileio.isdir(model_dir):
        return None
    entries = [e for e in fileio.listdir(model_dir) if not e.startswith("previous_run_")]
    if not entries:
        return None
    n = 1
    while fileio.exists(os.path.join(model_dir, f"previous_run_{n}")):
        n += 1
    target = os.path.join(model_dir, f"previous_run_{n}")
    if fileio.is_remote(target):
        fileio.makedirs(target)
    else:
        os.makedirs(target)  # (refuses a folder that appeared meanwhile)
    for entry in entries:
        fileio.move(os.path.join(model_dir, entry), os.path.join(target, entry))
    return target


# -- the loop's hooks ---------------------------------------------------------------------------------

class Hook:
    """Something the loop calls around each step (all methods optional)."""

    def on_stage_start(self, loop, stage_index: int, start_step: int, target: int) -> None: ...
    def before_step(self, loop, step: int) -> None: ...
    def after_step(self, loop, step: int, logs: dict) -> None: ...
    def on_stage_end(self, loop, stage_index: int) -> None: ...
    def on_train_end(self, loop) -> None: ...


class LearningRateHook(Hook):
    """``lr_schedule`` (a pure function of the stage step) before each step, or the plateau rule after it."""

    def __init__(self, lr_schedule=None):
        self.lr_schedule = lr_schedule

    def before_step(self, loop, step):
        if self.lr_schedule is not None:
            optimizer = loop.trainer.current_optimizer
            scheduled = self.lr_schedule(step)
            if abs(learning_rate_of(optimizer) - scheduled) > 1e-12 * max(scheduled, 1e-30):
                optimizer.learning_rate.assign(scheduled)

    def after_step(self, loop, step, logs):
        if self.lr_schedule is None:
            new_lr = loop.run.plateau.update(logs["loss"], loop.trainer.current_optimizer)
            if new_lr is not None:
                logging.info("loss plateaued: learning rate -> %g", new_lr)


class ProgressHook(Hook):
    """The stage's progress (:mod:`erl_derain.progress`): a bar redrawn in place on a terminal, one
    plain line every ``every`` (``"30s"``, or a number of steps) when stdout is a file or a pipe."""

    def __init__(self, every=None, stream=None, mode: str = "auto"):
        from erl_derain.progress import DEFAULT_EVERY, parse_every

        self.every = DEFAULT_EVERY if every is None else every
        parse_every(self.every)  # a bad --progress_every fails before any step
        self.stream, self.mode = stream, mode
        self.progress = None

    def on_stage_start(self, loop, stage_index, start_step, target):
        from erl_derain.progress import Progress

        stage = loop.trainer.stages[stage_index]
        if start_step < target:
            print(f"Stage {stage.name} ({stage_index + 1}/{len(loop.trainer.stages)}): training "
                  f"{', '.join(stage.train)}; steps {start_step}->{target}", file=self.stream or sys.stdout,
                  flush=True)
        self.progress = Progress(target, initial=start_step, unit="step", every=self.every, stream=self.stream,
                                 mode=self.mode, prefix=f"  {stage.name} ")

    def after_step(self, loop, step, logs):
        self.progress.update(step, {**logs, "lr": learning_rate_of(loop.trainer.current_optimizer)})

    def on_stage_end(self, loop, stage_index):
        if self.progress is not None:
            self.progress.close()

    def on_train_end(self, loop):
        self.on_stage_end(loop, loop.stage_index)


class SummaryHook(Hook):
    """TensorBoard scalars every ``log_every`` steps and at each stage's last step."""

    def __init__(self, writer, log_every: int):
        self.writer, self.log_every = writer, int(log_every)

    def after_step(self, loop, step, logs):
        if step % self.log_every == 0 or step == loop.target:
            stage = loop.trainer.stage.name
            with self.writer.as_default(step=int(loop.run.global_step)):
                for k, v in logs.items():
                    tf.summary.scalar(f"{stage}/{k}", v)
                tf.summary.scalar(f"{stage}/learning_rate", learning_rate_of(loop.trainer.current_optimizer))


class ImageSummaryHook(Hook):
    """TensorBoard images every ``every`` steps and at each stage's last step, so that training can be
    watched: for each example of a fixed validation batch (``batch``: ``rainy`` and ``clean``, float
    [N, H, W, 3] in [0, 1]) one picture of the rainy input, the output of the network as trained so
    far (``trainer.inference_model()``) and the clean target side by side, under ``images/<stage>``
    (uint8, rounded). A failure to draw it is a warning, never a stop of training."""

    def __init__(self, writer, every: int, batch: dict):
        self.writer, self.every = writer, int(every)
        self.rainy = np.asarray(batch["rainy"], np.float32)
        self.clean = np.asarray(batch["clean"], np.float32)
        self.names = [str(n) for n in batch.get("name", [])]
        self.warned = False

    def pictures(self, trainer, stage_index: int, step: int) -> np.ndarray:
        """uint8 [N, H, 3 W, 3]: rainy | output | clean."""
        before = trainer.progress
        trainer.set_progress(stage_index, step)  # the network as trained so far (e.g. ERL-Net's REN or not)
        try:
            out = np.asarray(trainer.inference_model()(tf.constant(self.rainy)), np.float32)
        finally:
            trainer.progress = before
        strip = np.concatenate([self.rainy, out, self.clean], axis=2)
        return np.floor(np.clip(strip, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def after_step(self, loop, step, logs):
        if not (step % self.every == 0 or step == loop.target):
            return
        try:
            pictures = self.pictures(loop.trainer, loop.stage_index, step)
        except Exception as e:  # pylint: disable=broad-except  (a picture must not stop training)
            if not self.warned:
                logging.warning("TensorBoard images (--image_summary_every) not written: %s", e)
                self.warned = True
            return
        names = f" ({', '.join(self.names)})" if self.names else ""
        with self.writer.as_default(step=int(loop.run.global_step)):
            tf.summary.image(f"images/{loop.trainer.stage.name}", pictures, max_outputs=len(pictures),
                             description=f"rainy input | output | clean target of the validation images{names}, "
                                         f"stage {loop.trainer.stage.name} step {step}")


class CheckpointHook(Hook):
    def __init__(self, every: int):
        self.every = int(every)

    def after_step(self, loop, step, logs):
        if step % self.every == 0 and step != loop.target:
            loop.run.save()


class CallbackHook(Hook):
    def __init__(self, fn):
        self.fn = fn

    def after_step(self, loop, step, logs):
        self.fn(loop.stage_index, step, logs)


class _Loop:
    """State the hooks read: the trainer, the run, the current stage and its target step."""

    def __init__(self, trainer, run):
        self.trainer, self.run = trainer, run
        self.stage_index, self.target = 0, 0


def train(trainer, config, dataset_fn: Callable[[int], tf.data.Dataset], *, model_dir: str,
          stage_steps: list[int], batch_size: int, jit_compile: str | bool = "auto",
          checkpoint_every: int = 500, log_every: int = 50, keep_checkpoints: int = 3,
          plateau: PlateauSchedule | None = None, lr_schedule=None, verbose: int = 1,
          on_nan: str = "stop", max_skipped: int = 10,
          on_step_end: Callable[[int, int, dict], None] | None = None,
          strategy: tf.distribute.Strategy | None = None, stop_after: int = 0,
          init_from: str | None = None, hooks: list | None = None, progress_every=None,
          image_summary_every: int = 0, image_batch: dict | None = None, force_new_config: bool = False) -> dict:
    """Train ``trainer`` through its stages; ``dataset_fn(start_index)`` returns the batched training
    stream from example ``start_index`` on (deterministic, so a resumed run sees the same data). A
    ``dataset_fn(start_index, rows=None)`` (``inputs.training_stream``) is given each worker's rows
    of a multi-worker run (``distribute.worker_rows``), so that a worker reads only its share.

    ``config``: the run's :class:`erl_derain.run_config.RunRecord` (or a flat dict of settings),
    written to ``model_dir``. ``strategy``: a tf.distribute strategy in whose scope ``trainer`` was
    made (None: the default strategy, one replica: the same path). ``batch_size`` and ``dataset_fn``'s
    batches are global (per replica x replicas); each step runs ``train_step`` on every replica
    (``strategy.run``) and logs the mean over replicas; only the chief writes the config, summaries and
    checkpoints. ``stop_after`` > 0: stop after that many steps of this call with a checkpoint (a job
    slot shorter than the run); the next call resumes.

    ``lr_schedule`` (a pure function of the stage step, e.g. StepSchedule) sets every stage's learning
    rate; it replaces the plateau rule. ``on_nan``: a non-finite loss stops training naming the step,
    the batch's files and the loss terms, keeping the last good checkpoint (``"stop"``), or undoes that
    step and goes on with the next batch (``"skip_batch"``; more than ``max_skipped`` in a row stop
    training). ``init_from``: a new run (no checkpoint in ``model_dir`` yet) starts from the network
    weights of that run's latest checkpoint (another ``--model_dir`` of the same method and sizes); the
    optimisers and the step counters start afresh. Stages given 0 steps are passed over, so
    ``stage_steps=[0, 0, n]`` fine-tunes with the last stage only. A run that already has a checkpoint
    resumes from it instead. ``hooks``: more :class:`Hook` s. ``progress_every``: when stdout is not a
    terminal, one progress line every that many seconds (``"30s"``, the default) or steps (``"200"``;
    :mod:`erl_derain.progress`). ``image_summary_every`` > 0 with ``image_batch`` (``rainy``, ``clean``
    [N, H, W, 3]): TensorBoard pictures of input, output and target every that many steps
    (:class:`ImageSummaryHook`). Returns a summary dict (final losses,
    steps, wall time, skipped batches).

    A ``model_dir`` holding a run is left untouched until the new settings are known to fit its
    checkpoint: settings that changed against its ``config.json`` and build a network the checkpoint
    does not fit raise :class:`SettingsMismatch` listing the changes, and so does a run of another
    method; ``force_new_config`` moves that run into ``<model_dir>/previous_run_<n>/`` and starts a new
    one (``set_aside_run``)."""
    if on_nan not in ("stop", "skip_batch"):
        raise TrainingError(f"--on_nan must be stop or skip_batch, got {on_nan!r}")
    record = as_record(config)
    stages = trainer.stages
    if len(stage_steps) != len(stages):
        flag = f" of {trainer.schedule_flag}" if getattr(trainer, "schedule_flag", "") else ""
        raise TrainingError(f"--stage_steps has {len(stage_steps)} value(s) but the schedule{flag} has "
                            f"{len(stages)} stage(s): {', '.join(s.name for s in stages)}")
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribute.is_chief(strategy)
    verbose = verbose if chief else 0
    changes = prepare_model_dir(model_dir, record, force_new_config=force_new_config) if chief else {}
    if changes and force_new_config and chief:
        aside = set_aside_run(model_dir)
        if aside and verbose:
            print(f"--force_new_config: the run that was in {model_dir} is now {aside}", flush=True)
        changes = {}
    with strategy.scope():
        trainer.build_networks()
        backup = StateBackup(trainer) if on_nan == "skip_batch" else None
    if record.run.sync_batchnorm:
        synced = distribute.synchronize_batchnorm(trainer.networks().values())
        if verbose and strategy.num_replicas_in_sync > 1:
            print(f"--sync_batchnorm: {synced} BatchNorm layer(s) use the statistics of the global batch"
                  if synced else "--sync_batchnorm: the networks have no BatchNorm layer (no effect)", flush=True)
    # (the stage/step counters live on the host: made outside the scope)
    run = Run(model_dir, trainer, keep_checkpoints=keep_checkpoints, plateau=plateau, chief=chief)
    try:
        restored, initialised = _resume_or_initialise(run, trainer, init_from, verbose)
    except TrainingError as e:
        if not changes or "does not match" not in str(e) or str(e).startswith("--init_from"):
            raise
        raise SettingsMismatch(
            f"--model_dir={model_dir}: the settings changed against its config.json and the network they build "
            f"does not fit its checkpoint; nothing in it was changed. Changed:\n{_format_changes(changes)}\n"
            f"Run again with the run's settings (--flagfile={os.path.join(model_dir, 'flags.txt')}), choose another "
            f"--model_dir, or give --force_new_config to start a new run there (the old one is moved into "
            f"{os.path.join(model_dir, 'previous_run_<n>')}).") from e
    if chief:  # the settings fit the checkpoint (or there is none): now the config may change
        if changes:
            logging.warning("resuming %s with changed settings: %s", model_dir, changes)
            if verbose:
                print(f"Resuming {model_dir} with changed settings:\n{_format_changes(changes)}", flush=True)
        fileio.makedirs(model_dir)
        from erl_derain.run_config import write_record

        write_record(model_dir, record)
    jit = resolve_jit_compile(jit_compile)
    skipped, in_a_row = [], 0
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "logs")) if chief else \
        tf.summary.create_noop_writer()
    loop = _Loop(trainer, run)
    all_hooks = [LearningRateHook(lr_schedule)]
    if verbose:
        all_hooks.append(ProgressHook(progress_every))
    all_hooks += [SummaryHook(writer, log_every), CheckpointHook(checkpoint_every)]
    if chief and image_summary_every and image_batch is not None:
        all_hooks.append(ImageSummaryHook(writer, image_summary_every, image_batch))
    if on_step_end is not None:
        all_hooks.append(CallbackHook(on_step_end))
    all_hooks += list(hooks or [])
    summary = {"stages": {}, "resumed_from": restored, "initialised_from": initialised}
    t_start = time.time()
    last_logs: dict = {}
    steps_done = 0
    with cpu_training_graph_options():  # no grappler error lines on CPU (the function's docstring)
        while int(run.stage) < len(stages):
            si = int(run.stage)
            stage = stages[si]
            target = int(stage_steps[si])
            trainer.set_stage(si)
            step_fn = _step_function(trainer, strategy, jit)  # traced per stage: the stage is Python state
            loop.stage_index, loop.target = si, target
            start_step = int(run.step)
            for hook in all_hooks:
                hook.on_stage_start(loop, si, start_step, target)
            t_stage = time.time()
            if start_step < target:
                start = int(run.global_step) * batch_size
                iterator = iter(distribute.distribute_batches(
                    strategy, _worker_stream(dataset_fn, start), batch_size))
                for step in range(start_step + 1, target + 1):
                    batch = next(iterator)
                    for hook in all_hooks:
                        hook.before_step(loop, step)
                    if backup is not None:
                        backup.save()
                    logs = step_fn(batch)
                    values = {k: float(v) for k, v in logs.items()}
                    if not all(math.isfinite(v) for v in values.values()):
                        names = _batch_names(dataset_fn, int(run.global_step) * batch_size, batch_size)
                        where = (f"stage {stage.name} step {step} (global step {int(run.global_step) + 1}) on batch "
                                 f"{names}: {values}")
                        if backup is None or in_a_row >= max_skipped:
                            raise TrainingError(
                                f"non-finite loss at {where}; the last good checkpoint ({run.manager.latest_checkpoint})"
                                f" is kept" + (f" ({in_a_row} batches in a row were skipped before)" if in_a_row else ""))
                        backup.restore()  # the step never happened; its batch is consumed
                        skipped.append(names)
                        in_a_row += 1
                        logging.warning("non-finite loss at %s: batch skipped", where)
                        run.step.assign(step)
                        run.global_step.assign_add(1)
                        continue
                    in_a_row = 0
                    run.step.assign(step)
                    run.global_step.assign_add(1)
                    for hook in all_hooks:
                        hook.after_step(loop, step, values)
                    last_logs = values
                    steps_done += 1
                    if stop_after and steps_done >= stop_after and step != target:
                        run.save()
                        for hook in all_hooks:
                            hook.on_train_end(loop)
                        summary.update(stopped_early=True, seconds=time.time() - t_start, skipped_batches=skipped,
                                       global_step=int(run.global_step))
                        return summary
            for hook in all_hooks:
                hook.on_stage_end(loop, si)
            summary["stages"][stage.name] = {"steps": target, "seconds": time.time() - t_stage, "final": last_logs}
            run.stage.assign_add(1)
            run.step.assign(0)
            run.plateau.reset()
            run.save()
    for hook in all_hooks:
        hook.on_train_end(loop)
    writer.flush()
    summary["seconds"] = time.time() - t_start
    summary["skipped_batches"] = skipped
    summary["global_step"] = int(run.global_step)
    return summary


@contextlib.contextmanager
def cpu_training_graph_options():
    """Grappler's options for the training step on CPU (no GPU/TPU): its ``remapping`` pass off there.
    On the gradient graphs of the networks here that pass fails (TF 2.21, oneDNN: "remapper failed:
    INVALID_ARGUMENT: Mutation::Apply error: fanout '.../LeakyReluGrad' exist for missing node
    '.../BiasAdd'", one error line per traced step) and grappler then keeps the graph as it was, so
    turning it off changes no result and no speed (the same losses, measured: 1.47 vs 1.41 steps/s on
    the quickstart), only the error lines go. Where the pass does not fail (MENET, PReNet: no error
    line) their CPU steps took as long without it (within the noise of a shared machine). Functions first run after the loop (evaluation,
    inference) get TensorFlow's default again."""
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        yield
        return
    before = tf.config.optimizer.get_experimental_options().get("remapping", True)
    tf.config.optimizer.set_experimental_options({"remapping": False})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"remapping": before})


PRETRAINED_PREFIX = "pretrained"


def _resume_or_initialise(run, trainer, init_from: str | None, verbose: int):
    """(checkpoint resumed from, checkpoint whose weights a new run starts from): the run's own latest
    checkpoint, else with ``init_from`` the network weights of that run's (``pretrained[:NAME]``: of a
    bundled model, its de-raining network; training-only parts start afresh)."""
    stages = trainer.stages
    restored = run.restore()
    initialised = None
    if not restored and init_from and init_from.split(":")[0] == PRETRAINED_PREFIX:
        from erl_derain import pretrained

        name = init_from.split(":", 1)[1] if ":" in init_from else pretrained.DEFAULT
        try:
            trainer.build_networks()
            pretrained.assign_weights(trainer.inference_model(), pretrained.checked_weights_path(name))
        except pretrained.PretrainedError as e:
            raise TrainingError(f"--init_from={init_from}: {e} (the method and the network sizes must be the "
                                f"bundled model's: erl_derain/pretrained/{name}.json)") from e
        initialised = f"the bundled model {name}"
        if verbose:
            print(f"Starting from the network weights of {initialised} (--init_from)", flush=True)
    elif not restored and init_from:
        try:
            initialised = Run(init_from, trainer).restore(
                networks_only=True, built_from="this run's settings (the method and the network sizes must be the same)")
        except TrainingError as e:
            raise TrainingError(f"--init_from={init_from}: {e}") from e
        if initialised is None:
            raise TrainingError(f"--init_from={init_from}: no checkpoint in {os.path.join(init_from, 'checkpoints')} "
                                f"(expected the --model_dir of a finished or running training)")
        logging.info("initialised from %s", initialised)
        if verbose:
            print(f"Starting from the network weights of {initialised} (--init_from)", flush=True)
    if restored:
        logging.info("resumed from %s at stage %s step %d", restored, int(run.stage), int(run.step))
        if verbose:
            print(f"Resuming {run.model_dir} at stage {stages[min(int(run.stage), len(stages) - 1)].name} "
                  f"(#{int(run.stage) + 1}/{len(stages)}), step {int(run.step)}", flush=True)
    return restored, initialised


def _worker_stream(dataset_fn, start: int):
    """``make_dataset(rows)`` for ``distribute.distribute_batches``: the run's stream from ``start``, of
    a worker's rows when it is sharded (a ``dataset_fn`` of one argument gets no ``rows``)."""
    try:
        takes_rows = "rows" in inspect.signature(dataset_fn).parameters
    except (TypeError, ValueError):
        takes_rows = False
    if not takes_rows:
        return lambda: dataset_fn(start).map(_step_inputs)

    def make_dataset(rows):
        if rows is None:
            return dataset_fn(start).map(_step_inputs)
        print(f"This worker reads rows {rows.first}-{rows.first + rows.count - 1} of each global batch of "
              f"{rows.period} (its replicas' examples only)", flush=True)
        return dataset_fn(start, rows=rows).map(_step_inputs)

    return make_dataset


def _batch_names(dataset_fn, position: int, batch_size: int) -> list[str]:
    """The file names of the global batch at example ``position`` (re-read from the deterministic
    stream: only when a step failed)."""
    try:
        batch = next(iter(dataset_fn(position).take(1)))
        return [n.decode() for n in batch["name"].numpy()] if "name" in batch else []
    except Exception:  # pylint: disable=broad-except  (a message detail; never hide the real error)
        return []


def _step_inputs(batch: dict) -> dict:
    """The tensors ``train_step`` takes: everything but strings (file names stay on the host)."""
    return {k: v for k, v in batch.items() if v.dtype != tf.string}


def _step_function(trainer, strategy: tf.distribute.Strategy, jit: bool):
    """One step on every replica, the logs averaged over replicas. With ``jit`` the per-replica step
    is XLA-compiled, as Keras does under a strategy when asked explicitly."""
    several = strategy.num_replicas_in_sync > 1 or isinstance(
        strategy, (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy))
    if jit and several and not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU")):
        raise TrainingError("--jit_compile=true under a --strategy needs GPUs or TPUs: TensorFlow cannot XLA-compile "
                            "a replica step whose variables live on another CPU device; use --jit_compile=false")
    replica_step = tf.function(trainer.train_step, jit_compile=True) if jit else trainer.train_step

    @tf.function(reduce_retracing=True)
    def step(batch):
        logs = strategy.run(replica_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

    return step


def load_trainer(model_dir: str):
    """``(trainer, record)``: the trainer of ``model_dir``'s config.json with its latest weights, and
    its :class:`erl_derain.run_config.RunRecord`; the trainer knows how far training got
    (``set_progress``: the network as trained so far)."""
    from erl_derain.methods import make_trainer

    record = read_config(model_dir)
    trainer = make_trainer(record)
    trainer.build_networks()
    run = Run(model_dir, trainer)
    path = run.restore(networks_only=True)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(model_dir, 'checkpoints')}: train first")
    progress = tf.train.Checkpoint(stage=run.stage, step=run.step)
    progress.read(path).expect_partial()
    trainer.set_progress(int(run.stage), int(run.step))
    return trainer, record
