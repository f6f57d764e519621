"""Scale and speed settings every trainer shares: tf.distribute strategies, mixed precision, and the
scaling of losses before their gradients.

* ``make_strategy(name)``: ``default`` (one device), ``mirrored`` (every local GPU, else the CPU's
  logical devices), ``multi_worker`` (``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``) or ``tpu``.
* ``--batch_size`` is per replica: the global batch is ``batch_size * replicas``. Each global batch is
  cut into consecutive per-replica slices (``distribute_batches``; each worker of a multi-worker run
  reads only its replicas' rows, ``worker_rows``), so a run on R replicas sees the
  same examples in the same order as a single-device run with R times the batch.
* Inside a replica, ``for_gradients(loss, optimizer)`` divides a loss (a mean over the replica's
  examples) by the number of replicas, because the optimizers sum gradients over replicas, and
  multiplies by the optimizer's loss scale (mixed_float16); ``replica_mean`` averages a value such as
  the GB/LB task weights over the replicas so that every replica applies the same weights.
* ``synchronize_batchnorm(networks)`` (``--sync_batchnorm``): BatchNorm statistics of the global
  batch instead of each replica's slice.
* ``set_precision(mixed)``: ``mixed_float16`` on GPU, ``mixed_bfloat16`` on CPU and TPU, else
  float32. Variables stay float32; the networks return float32 (``as_float32``); optimizers made
  with ``optimizer(...)`` get dynamic loss scaling under mixed_float16.
"""

from __future__ import annotations

import inspect
import json
import os

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class DistributeError(ValueError):
    """A strategy cannot be set up (no TF_CONFIG, no TPU address, ...); the message says what to give."""


def split_cpu(count: int) -> None:
    """Make ``count`` logical CPU devices (to try ``--strategy=mirrored`` without GPUs). Must run before
    TensorFlow initialises its devices."""
    if count <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as err:
        raise DistributeError(f"--logical_cpus={count}: TensorFlow has already initialised its devices "
                              f"({err})") from err


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise DistributeError("--strategy=multi_worker reads the cluster from the TF_CONFIG environment "
                              "variable, which is not set; e.g. TF_CONFIG='{\"cluster\": {\"worker\": "
                              "[\"host1:12345\", \"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}'")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({err}): {raw[:200]!r}") from err
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise DistributeError(f"TF_CONFIG needs 'cluster' and 'task' entries, got {raw[:200]!r}")
    task = config["task"]
    workers = config["cluster"].get(task.get("type"), [])
    if not 0 <= int(task.get("index", -1)) < len(workers):
        raise DistributeError(f"TF_CONFIG's task {task} is not in its cluster {config['cluster']}")
    return config


def make_strategy(name: str = "default", *, tpu: str | None = None) -> tf.distribute.Strategy:
    """The ``--strategy``; call before building any network or optimizer (they are made in its scope)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        _tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        if not tpu:
            raise DistributeError("--strategy=tpu needs --tpu: the TPU's name or grpc:// address ('local' on a "
                                  "TPU VM)")
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="" if tpu == "local" else tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise DistributeError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, summaries and the config: the ``chief`` task, else
    worker 0 (TF_CONFIG without a chief), and always outside multi-worker training."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def precision_policy(mixed: bool) -> str:
    if not mixed:
        return "float32"
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def set_precision(mixed: bool) -> str:
    """Set Keras' global dtype policy for the networks built next; returns its name."""
    name = precision_policy(mixed)
    keras.mixed_precision.set_global_policy(name)
    return name


def optimizer(make, *args, **kwargs):
    """``make(*args, **kwargs)`` (a Keras optimizer class), wrapped in a LossScaleOptimizer under
    mixed_float16 (bfloat16 has float32's range and needs no loss scaling)."""
    opt = make(*args, **kwargs)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt, name=f"{opt.name}_loss_scaled")
    return opt


def num_replicas() -> int:
    ctx = tf.distribute.get_replica_context()
    return ctx.num_replicas_in_sync if ctx is not None else tf.distribute.get_strategy().num_replicas_in_sync


def for_gradients(value, optimizer=None):
    """``value`` (a loss, or GB/LB task weights used as output gradients) scaled for ``tape.gradient``
    inside a replica: divided by the number of replicas, times ``optimizer``'s loss scale."""
    n = num_replicas()
    if n > 1:
        value = value / n
    return optimizer.scale_loss(value) if optimizer is not None else value


def replica_mean(value):
    """The mean of ``value`` over the replicas (identity on one replica)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, value)


def synchronize_batchnorm(networks) -> int:
    """Make every ``keras.layers.BatchNormalization`` (and subclass) inside ``networks`` compute its
    batch statistics over all replicas (``--sync_batchnorm``): Keras reads the layer's
    ``synchronized`` attribute when it is called, so the layers of a built network switch too. The
    statistics of R replicas of B/R examples are then those of the global batch of B (mean and
    variance from all-reduced sums); without it each replica normalises with its own slice's and the
    moving averages keep the first replica's values. Nothing in the checkpoints
    changes. Returns the number of layers switched (0: the networks have no BatchNorm)."""
    count = 0
    for network in networks:
        for layer in network._flatten_layers(include_self=True, recursive=True):  # (Keras has no public walk)
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
                count += 1
    return count


def as_float32(x):
    """A network output in float32 (mixed precision computes in float16/bfloat16)."""
    return tf.cast(x, tf.float32) if x.dtype != tf.float32 else x


def worker_rows(strategy: tf.distribute.Strategy, global_batch: int, pipeline_id: int, num_pipelines: int):
    """The rows of each global batch that input pipeline ``pipeline_id`` (a worker) reads, as a
    ``data.streams.Rows``; None when one pipeline reads everything (one worker)."""
    from erl_derain.data.streams import Rows

    if num_pipelines <= 1:
        return None
    local = strategy.num_replicas_in_sync // num_pipelines
    per_replica = global_batch // strategy.num_replicas_in_sync
    return Rows(pipeline_id * local * per_replica, local * per_replica, global_batch)


def distribute_batches(strategy: tf.distribute.Strategy, make_dataset, global_batch: int):
    """A distributed dataset whose replica r (of R) gets rows ``[r * B/R, (r + 1) * B/R)`` of each
    global batch of ``B = global_batch`` examples, so the order is exactly that of a single-device run,
    also after a resume.

    ``make_dataset(rows)``: with ``rows`` None, the global batches; with ``rows`` (``worker_rows``: a
    worker's rows of each global batch, under ``MultiWorkerMirroredStrategy``), batches of those rows
    only. The data functions of ``erl_derain.data`` keep a worker's positions before they decode
    anything, so each of W workers reads and decodes 1/W of the examples (of a folder: of the
    files; of TFDS records: every record is read from its file, or the in-memory cache, and skipped
    undecoded). A ``make_dataset`` that takes no argument gets the global batches on every worker,
    which keeps its replicas' rows."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise DistributeError(f"the global batch {global_batch} is not divisible by the {replicas} replicas")
    per_replica = global_batch // replicas
    try:
        takes_rows = bool(inspect.signature(make_dataset).parameters)
    except (TypeError, ValueError):
        takes_rows = False

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        local = replicas // ctx.num_input_pipelines
        rows = worker_rows(strategy, global_batch, ctx.input_pipeline_id, ctx.num_input_pipelines)
        if takes_rows:
            ds, first = make_dataset(rows), 0  # (batches of this worker's rows)
        else:
            ds, first = make_dataset(), ctx.input_pipeline_id * local * per_replica

        def mine(batch):
            return tf.nest.map_structure(
                lambda t: tf.reshape(t[first:first + local * per_replica],
                                     tf.concat([[local, per_replica], tf.shape(t)[1:]], 0)), batch)

        return ds.map(mine).unbatch()

    options = tf.distribute.InputOptions(experimental_replication_mode=tf.distribute.InputReplicationMode.PER_WORKER)
    return strategy.distribute_datasets_from_function(dataset_fn, options)
