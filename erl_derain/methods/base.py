"""The trainer contract: what a method gives the shared code (training loop, evaluation, derain, export,
the bundled model), and the stage machinery every method shares.

A method subclasses :class:`Trainer` and provides:

* ``stages``: a tuple of :class:`Stage` (a paper's schedule: the networks each stage updates and the
  optimizer the learning-rate rule drives);
* :meth:`Trainer.networks`: the checkpointed networks by key (the keys name them in checkpoints, so
  they must never change for a method), and :meth:`Trainer.sub_networks` when stages update parts of
  them (ERL-Net's MEN, REN, MDE inside one network);
* ``self.optimizers``: the optimizers by key (checkpointed as ``optimizer_<key>``);
* :meth:`Trainer.train_step`: one step on a batch dict (``rainy``, ``clean`` and the method's own
  streams), returning logs with ``loss``; it runs inside ``tf.function`` and ``strategy.run``;
* :meth:`Trainer.inference_network`: the de-raining network as trained so far (NHWC in [0, 1] ->
  NHWC), and ``pad_multiple``; :meth:`Trainer.inference_model` wraps them in the one
  :class:`erl_derain.inference.InferenceModel` that evaluate, compare, derain, export and the bundled
  model use.

Optional hooks: :meth:`Trainer.on_stage_start` (called when a stage becomes current),
:meth:`Trainer.step_state_variables` (state a step changes that is not checkpointed, restored with the
rest when ``--on_nan=skip_batch`` undoes a step), :meth:`Trainer.extra_checkpoint_items`,
:meth:`Trainer.evaluation_networks` (other networks ``evaluate --network`` can score) and
:meth:`Trainer.optimizer_variables` (which variables each optimizer updates).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf


class MethodError(ValueError):
    """A method cannot be built or run with these settings; the message names the flag."""


@dataclass(frozen=True)
class Stage:
    """One stage of a paper's schedule.

    ``train``: the sub-networks (keys of :meth:`Trainer.sub_networks`) the stage updates;
    ``optimizer``: the key of the optimizer whose learning rate the loop's rule drives in this stage
    (default: the stage's position, ``"0"``, ``"1"``, ...)."""
    name: str
    train: tuple[str, ...]
    optimizer: str | None = None


def unique_trainable_weights(*layers) -> list:
    """The trainable variables of several layers, in order, without duplicates."""
    seen, out = set(), []
    for layer in layers:
        for v in layer.trainable_weights:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    return out


class Trainer:
    """Base class of every method's trainer (see the module docstring for the contract)."""

    #: set by subclasses
    stages: tuple[Stage, ...] = ()
    #: the flag that chooses the schedule, named in errors about the number of stages
    schedule_flag: str = ""

    def __init__(self):
        self.stage_index = 0
        self.progress: tuple[int, int] | None = None  # (stage, step) of a restored checkpoint
        self.optimizers: dict[str, keras.optimizers.Optimizer] = {}
        self._built = False

    # -- what a method provides ----------------------------------------------------------------------
    @property
    def pad_multiple(self) -> int:
        raise NotImplementedError

    def networks(self) -> dict[str, keras.Layer]:
        raise NotImplementedError

    def sub_networks(self) -> dict[str, keras.Layer]:
        """The units stages train (default: the checkpointed networks)."""
        return self.networks()

    def train_step(self, batch: dict) -> dict:
        raise NotImplementedError

    def inference_network(self):
        """The de-raining network as trained so far: NHWC [0, 1] -> NHWC (any dtype; unclipped)."""
        raise NotImplementedError

    def sample_shape(self) -> tuple:
        """The input shape the networks are built with (sides a multiple of ``pad_multiple``)."""
        side = max(32, self.pad_multiple)
        return (1, side, side, 3)

    # -- hooks ---------------------------------------------------------------------------------------
    def build_extra(self) -> None:
        """Called once after the networks are built (e.g. state whose shape follows the networks)."""

    def on_stage_start(self, index: int) -> None:
        """Called when stage ``index`` becomes the current one (also on resume)."""

    def step_state_variables(self) -> list:
        return []

    def extra_checkpoint_items(self) -> dict:
        return {}

    def evaluation_networks(self) -> dict:
        """``{name: (InferenceModel, input key)}`` that ``evaluate --network`` can score."""
        return {"derain": (self.inference_model(), "rainy")}

    def optimizer_variables(self, key: str) -> list:
        """The variables optimizer ``key`` updates (default: those of the stages that use it)."""
        names = []
        for i, stage in enumerate(self.stages):
            if self.optimizer_key(i) == key:
                names += [n for n in stage.train if n not in names]
        subs = self.sub_networks()
        return unique_trainable_weights(*(subs[n] for n in names))

    # -- provided ------------------------------------------------------------------------------------
    def optimizer_key(self, index: int) -> str:
        stage = self.stages[index]
        return stage.optimizer if stage.optimizer is not None else str(index)

    def build_networks(self, image_shape=None) -> None:
        """Build every network (on zeros of ``image_shape``, default :meth:`sample_shape`) and optimizer."""
        x = tf.zeros(image_shape or self.sample_shape())
        for net in self.networks().values():
            net(x, training=False)
        for key, opt in self.optimizers.items():
            opt.build(self.optimizer_variables(key))
        if not self._built:
            self.build_extra()
            self._built = True

    def set_stage(self, index: int) -> None:
        if not 0 <= int(index) < len(self.stages):
            raise MethodError(f"stage {index} does not exist: the schedule has {len(self.stages)} stage(s) "
                              f"({', '.join(s.name for s in self.stages)})")
        self.stage_index = int(index)
        self.on_stage_start(self.stage_index)

    @property
    def stage(self) -> Stage:
        return self.stages[self.stage_index]

    def stage_variables(self, index: int | None = None) -> list:
        stage = self.stages[self.stage_index if index is None else index]
        subs = self.sub_networks()
        return unique_trainable_weights(*(subs[n] for n in stage.train))

    @property
    def current_optimizer(self):
        """The optimizer whose learning rate the training loop's rule drives in the current stage."""
        return self.optimizers[self.optimizer_key(self.stage_index)]

    def checkpoint_items(self) -> dict:
        items = dict(self.networks())
        items.update({f"optimizer_{k}": o for k, o in self.optimizers.items()})
        items.update(self.extra_checkpoint_items())
        return items

    def set_progress(self, stage: int, step: int) -> None:
        """Where training has reached (a restored checkpoint's stage and step)."""
        self.progress = (int(stage), int(step))

    def inference_model(self):
        from erl_derain.inference import InferenceModel

        return InferenceModel(self.inference_network(), self.pad_multiple, name=f"{type(self).__name__}_inference")
