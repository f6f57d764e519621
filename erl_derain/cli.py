"""``erl-derain``: the command line (an absl app). Thin: it parses flags and calls the library.

``erl-derain --help`` lists the verbs; ``erl-derain <verb> --help`` that verb's flags, and with
``--method=<name>`` that method's flags with their defaults. The flags of the shared run settings
(:class:`erl_derain.run_config.RunConfig`) and of each method's configuration are generated from the
dataclasses (``--<method prefix><field>``); old flag names are accepted with a warning.

Every verb's flags are checked by ``validate_flags(verb)`` right after parsing, before any model is
loaded or any data is read (TensorFlow itself is imported when the command starts: the method
registry imports the method modules, which build on Keras). Exit status: 0 all done; 1 some inputs
(or the work) failed, each failure listed once; 2 a usage error (flags, arguments, a plan refused
before any work); 130 interrupted (Ctrl-C), after a summary of what was written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import textwrap

from absl import app, flags, logging

if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):  # --verbosity=N: TF's C++ lines too
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ INFO/WARNING lines drown the progress bar

FLAGS = flags.FLAGS

# -- what and where (shared by the verbs) -----------------------------------------------------------
flags.DEFINE_string("method", "erlnet", "Method to train (erl-derain train --help lists them).")
flags.DEFINE_string("model_dir", None, "Run folder: checkpoints, config, TensorBoard logs (derain / evaluate "
                    "without it: the bundled pretrained model).")
flags.DEFINE_string("split", None, "Split: 'train' for training, 'test' for evaluation by default.")
# -- the training job (not part of a run's configuration) --------------------------------------------
flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints (one is also written at each stage end).")
flags.DEFINE_integer("log_every", 50, "Steps between TensorBoard summaries.")
flags.DEFINE_integer("image_summary_every", 500, "Steps between TensorBoard pictures of the rainy input, the output "
                     "and the clean target of a fixed validation batch (the first 3 images of --eval_split; 0: none).")
flags.DEFINE_string("progress_every", "30s", "train / derain videos: when stdout is not a terminal (a file, a pipe, "
                    "CI), one plain progress line every this many seconds ('30s') or steps / frames ('200') instead of "
                    "a bar redrawn in place.")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept on disk.")
flags.DEFINE_boolean("force_new_config", False, "train: when the settings differ from the run already in --model_dir, "
                     "start a new run there (without it, settings that do not fit its checkpoint are refused and "
                     "others resume the run): the old run is moved into <model_dir>/previous_run_<n>/ (nothing is "
                     "deleted).")
flags.DEFINE_integer("stop_after", 0, "Stop after this many steps with a checkpoint (a job slot shorter than the "
                     "run; the same command resumes); 0: train to the end.")
flags.DEFINE_integer("shuffle_buffer", 256, "Shuffle buffer for TFDS records.")
flags.DEFINE_integer("cache_mb", None, "Training splits up to this serialized size (MiB) are cached in memory and fully "
                     "permuted each epoch; larger ones stream through --shuffle_buffer (default 256; 0: never cache).")
flags.DEFINE_string("tpu", None, "--strategy=tpu: the TPU's name or grpc:// address ('local' on a TPU VM).")
flags.DEFINE_integer("logical_cpus", 0, "Split the CPU into this many logical devices (to try --strategy=mirrored "
                     "without GPUs; 0: leave the devices alone).")
flags.DEFINE_enum("on_nan", "stop", ["stop", "skip_batch"], "A non-finite loss: stop (naming step, files and loss "
                  "terms; the last good checkpoint is kept) or undo that step and skip its batch (10 in a row stop).")
flags.DEFINE_boolean("evaluate_after", True, "After training, evaluate on --eval_split and print PSNR/SSIM.")
flags.DEFINE_string("eval_split", "test", "Split evaluated after training.")
flags.DEFINE_string("output_dir", None, "derain / synthesize / a method's own verb: output folder (derain: 'derained').")
# -- evaluation / inference -------------------------------------------------------------------------
flags.DEFINE_enum("y_rounding", "rounded", ["rounded", "unrounded"], "Y channel rounded to uint8 (MATLAB) or kept in double.")
flags.DEFINE_integer("crop_border", 0, "Pixels removed from each side before PSNR/SSIM.")
flags.DEFINE_enum("eval_protocol", "full_y", ["full_y", "ten_crop_rgb"], "evaluate: full_y = whole test images, "
                  "Y (and RGB) PSNR/SSIM of the uint8 output; ten_crop_rgb = the MENET authors' protocol: the ten "
                  "--eval_crop_size crops of each test image (corners + centre of it and of its mirror), the network "
                  "run on each, RGB PSNR/SSIM (peak 255) of the unrounded output, mean over all crops.")
flags.DEFINE_integer("eval_crop_size", 224, "evaluate --eval_protocol=ten_crop_rgb: side of the ten crops (MENET: 224).")
flags.DEFINE_string("output", None, "evaluate / compare: output folder (per_image.csv, metrics.json, figures; "
                    "the cross-dataset table when evaluate gets several model_dirs or datasets).")
flags.DEFINE_string("baseline", None, "compare: model_dir of the baseline (e.g. MEMD).")
flags.DEFINE_string("candidate", None, "compare: model_dir of the candidate (e.g. ERL-Net).")
flags.DEFINE_integer("figures", 4, "compare: images shown in the before/after grid and RIM overlays (0: none); "
                     "evaluate on photos without clean images: in its rainy/de-rained grid.")
flags.DEFINE_integer("max_images", None, "evaluate: only the first N images.")
flags.DEFINE_list("network", ["derain"], "evaluate: the network(s) scored, side by side: derain (default) or one the "
                  "method offers besides, fed the input it translates (ERL-Net: clean_autoencoder, the clean-to-clean "
                  "network of stage I, fed the clean images: the paper's introduction experiment).")
flags.DEFINE_integer("tile", 512, "Images larger than this (pixels per side) are processed in overlapping tiles "
                     "(0: always whole images; otherwise larger than --tile_overlap). derain: 512; evaluate/compare "
                     "use whole images up to 1024 unless --tile is given, so the standard benchmarks are evaluated "
                     "whole, as in the papers.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"],
                  "Inference precision (derain, evaluate, export): bfloat16 rebuilds the network under Keras' "
                  "mixed_bfloat16 policy with the run's float32 weights (inputs and outputs stay float32); only on "
                  "a GPU or a CPU with AVX512_BF16 / AMX_BF16.")
flags.DEFINE_integer("tile_batch", 1, "Tiles of one image run per network call (stacked: more memory, fewer calls, the "
                     "same output; >= 1). Local models only.")
flags.DEFINE_integer("tile_overlap", 32, "Minimum overlap between neighbouring tiles, pixels (blended linearly; "
                     ">= 0, smaller than --tile).")
flags.DEFINE_integer("max_pixels", 100_000_000, "Images whose header declares more pixels than this are refused "
                     "before decoding (\"image too large: W x H\"): derain, evaluate, datasets, synthesize, the TF "
                     "Serving client; export: the limit of the derain_image signature. Default 100 MP.")
flags.DEFINE_integer("self_ensemble", 1, "derain / evaluate / compare: average the network's output over this many "
                     "mirrored views of each image (1: off; 2: + left-right; 4: + upside-down and both), each mirrored "
                     "back; N times the inference time. The bundled model gains about 0.2-0.3 dB with 4 (its card).")
flags.DEFINE_enum("output_format", "png", ["png", "same", "jpg", "webp", "tif"],
                  "derain: output file type; png keeps alpha and 16-bit, 'same' keeps each input's extension "
                  "(an input whose alpha or bit depth the format cannot hold is refused, not degraded).")
flags.DEFINE_integer("every_nth", 1, "derain, videos: keep every n-th frame (a preview, at the frame rate / n).")
flags.DEFINE_integer("max_frames", 0, "derain, videos: read only the first N frames (0: the whole clip).")
flags.DEFINE_integer("temporal", 1, "derain, videos: each output frame is the mean of the network's outputs over this "
                     "many frames centred on it (odd; 1: off); less flicker, some ghosting where things move.")
flags.DEFINE_string("video_codec", None, "derain, videos: the output's FourCC (default: mp4v for .mp4/.mov/.m4v/.mkv, "
                    "MJPG for .avi; FFV1 is lossless in .mkv/.avi).")
flags.DEFINE_boolean("overwrite", False, "derain: overwrite existing outputs; export: replace an existing --version.")
flags.DEFINE_string("export_base", None, "export: <base>/<version>/ is written (TF Serving layout).")
flags.DEFINE_string("serving_root", None, "export: the server's model root, a folder holding --export_base: "
                    "models.config, models.docker.config, batching_parameters.txt and their lock file go there and "
                    "nowhere else, and the printed Docker command mounts it (default: --export_base's parent).")
class _BundledModelParser(flags.ArgumentParser):
    """``--pretrained[=NAME]``: a name, or alone (as the switch it was) the default model."""

    def parse(self, argument):
        text = str(argument)
        return {"true": "erlnet", "false": None}.get(text.lower(), text)

    def flag_type(self):
        return "string"


# boolean=True: absl accepts --pretrained without a value (as "true") and --nopretrained.
flags.DEFINE_flag(flags.Flag(_BundledModelParser(), flags.ArgumentSerializer(), "pretrained", None,
                             "derain / evaluate / export: a bundled model instead of --model_dir (not both): erlnet "
                             "(the default without --model_dir), fast (MENET at small widths, for CPUs) or a name of "
                             "erl_derain/pretrained/. Plain --pretrained: erlnet.", boolean=True))
flags.DEFINE_enum("format", "saved_model", ["saved_model", "onnx", "litert"], "export: a TF Serving SavedModel, or "
                  "<export_base>/<version>/model.onnx or model.tflite with erl_derain.json beside it (pip install "
                  "'erl_derain[export]').")
flags.DEFINE_string("export_size", None, "export --format=onnx|litert: fix the input to 1 x N x N (or HxW) x 3 pixels; "
                    "default: any batch, height and width.")
flags.DEFINE_integer("version", None, "export: version number (default: next integer); derain --server: the "
                     "served version to query (default: the server's latest).")
flags.DEFINE_string("server", None, "derain: host:port of a TF Serving server (REST 8501 / gRPC 8500) to de-rain on "
                    "instead of --model_dir.")
flags.DEFINE_string("model_name", None, "derain --server: the served model's name (its export_base folder name).")
flags.DEFINE_enum("protocol", "rest", ["rest", "grpc"], "derain --server: REST (standard library) or gRPC "
                  "(pip install 'erl_derain[serving]').")
# -- synthesis --------------------------------------------------------------------------------------
flags.DEFINE_integer("renders_per_image", 1, "synthesize: rainy renderings per clean image.")
flags.DEFINE_float("rain_density", None, "synthesize: fraction of streak seeds (default: the library's).")
flags.DEFINE_float("rain_length", None, "synthesize: streak length in pixels.")
flags.DEFINE_float("rain_intensity", None, "synthesize: streak brightness.")
flags.DEFINE_integer("rain_layers", 1, "synthesize: streak layers.")
flags.DEFINE_boolean("rain_accumulation", False, "synthesize: add the JORDER veil (rain accumulation) model.")


# -- generated flags: the run settings, each method's configuration, the methods' own verbs ------------

def _define_generated_flags():
    from erl_derain import config as cfglib
    from erl_derain.methods import config_classes, discover
    from erl_derain.run_config import RunConfig

    cfglib.define_flags(RunConfig, "")
    for cls, spec in config_classes().items():
        cfglib.define_flags(cls, spec.flag_prefix)
    for spec in discover().values():
        for verb in spec.verbs:
            for name in verb.flags:
                if name not in FLAGS:
                    flags.DEFINE_string(name, None, f"{verb.name}: see erl-derain {verb.name} --help.")


_define_generated_flags()


class UsageError(ValueError):
    """Bad flags or arguments, or a plan refused before any work: exit status 2."""


class CommandError(RuntimeError):
    """The work failed (e.g. no server answers): exit status 1."""


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# What an interrupted or failed command keeps (printed with the error): set by the verbs as they go.
_PROGRESS: dict = {}


FLAGS_VERB = ""


def _require(name: str):
    value = getattr(FLAGS, name)
    if value in (None, ""):
        raise UsageError(f"--{name} is required for `erl-derain {FLAGS_VERB}`")
    return value


# -- the verbs -----------------------------------------------------------------------------------------

_DATA = ("dataset", "data_dir", "manual_dir", "clean_dir", "clean_exclude", "split")
_INFER = ("tile", "tile_overlap", "tile_batch", "self_ensemble", "jit_compile")
_TRAIN_JOB = ("model_dir", "force_new_config", "checkpoint_every", "log_every", "image_summary_every",
              "progress_every", "keep_checkpoints", "stop_after", "shuffle_buffer", "cache_mb", "tpu", "logical_cpus",
              "on_nan", "evaluate_after", "eval_split", "split", "max_pixels")
_EVAL = ("y_rounding", "crop_border", "eval_protocol", "eval_crop_size", "output", "max_images")
VERB_HELP = {
    "train": ("train a method on a dataset through its stages (resumes where it stopped)", None),
    "evaluate": ("Y-channel PSNR/SSIM of trained runs (or the bundled model) on test sets (several: the "
                 "cross-dataset table; a folder without clean images: no-reference NIQE / BRISQUE)",
                 ("model_dir", "pretrained", *_DATA, *_EVAL, "network", "figures", *_INFER, "precision", "max_pixels")),
    "compare": ("ERL-Net's dissection of a candidate against a baseline (hard/easy, RIM, mIoR/mIoB, figures)",
                ("baseline", "candidate", *_DATA, "y_rounding", "crop_border", "output", "max_images", "figures",
                 *_INFER, "max_pixels")),
    "derain": ("de-rain photos of any size and videos (the bundled model without --model_dir, or via TF Serving)",
               ("model_dir", "pretrained", "output_dir", "output_format", "overwrite", *_INFER, "precision", "server",
                "model_name", "protocol", "version", "max_pixels", "every_nth", "max_frames", "temporal", "video_codec", "progress_every")),
    "export": ("a TF Serving SavedModel (or an ONNX / LiteRT file) of a run's (or the bundled) inference network",
               ("model_dir", "pretrained", "export_base", "serving_root", "format", "export_size", "version",
                "overwrite", "precision", "max_pixels")),
    "prepare": ("write a benchmark's TFRecords from the files you unpacked (or say where to get them)",
                ("dataset", "manual_dir", "data_dir", "clean_dir", "clean_exclude", "max_pixels")),
    "synthesize": ("rainy/clean pairs from your clean photos with the package's rain model",
                   ("clean_dir", "output_dir", "renders_per_image", "rain_density", "rain_length", "rain_intensity",
                    "rain_layers", "rain_accumulation", "seed", "max_pixels")),
}


def _method_verbs() -> dict:
    from erl_derain.methods import discover

    return {verb.name: (spec, verb) for spec in discover().values() for verb in spec.verbs}


def verbs() -> list[str]:
    return [*VERB_HELP, *_method_verbs()]


def _flag_help(name: str) -> str:
    flag = FLAGS[name]
    value = flag.default
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    default = "" if flag.default is None else f" (default: {value})"
    text = f"--{name}{default}\n" + textwrap.fill(flag.help or "", width=96, initial_indent="      ",
                                                   subsequent_indent="      ")
    return "  " + text


def help_text(verb: str | None = None, method: str | None = None) -> str:
    """``erl-derain --help`` (verb is None) or ``erl-derain <verb> --help [--method=...]``."""
    from erl_derain import config as cfglib
    from erl_derain.methods import discover, get_method
    from erl_derain.run_config import RunConfig

    if verb is None:
        lines = ["usage: erl-derain <verb> [--flag=value ...] [--flagfile=file]", "", "verbs:"]
        lines += [f"  {name:<11} {text}" for name, (text, _) in VERB_HELP.items()]
        lines += [f"  {name:<11} {verb_spec.help}" for name, (_, verb_spec) in _method_verbs().items()]
        lines += ["", "erl-derain <verb> --help lists a verb's flags (train --help --method=<name>: a method's)."]
        return "\n".join(lines) + "\n"
    own = _method_verbs()
    if verb in own:
        spec, verb_spec = own[verb]
        return (f"erl-derain {verb}: {verb_spec.help}\n\nflags:\n"
                + "\n".join(_flag_help(n) for n in verb_spec.flags) + "\n")
    text, names = VERB_HELP[verb]
    out = [f"erl-derain {verb}: {text}", ""]
    if verb == "train":
        out.append("the run (saved in <model_dir>/config.json):")
        out += [_flag_help("method")] + [_flag_help(n) for n in cfglib.flag_names(RunConfig).values()]
        out += ["", "the job:"] + [_flag_help(n) for n in _TRAIN_JOB]
        methods = discover()
        if method:
            spec = get_method(method)
            out += ["", f"--method={spec.name}: {spec.description}"]
            out += [_flag_help(n) for n in cfglib.flag_names(spec.config_class, spec.flag_prefix).values()]
        else:
            out += ["", "methods (--method=<name> --help lists one's flags):"]
            out += [f"  {name:<8} {spec.description}" for name, spec in methods.items()]
    else:
        out.append("flags:")
        out += [_flag_help(n) for n in names]
    return "\n".join(out) + "\n"


def _record_from_flags():
    """The run's RunRecord from the command line; old flag names are named in a warning."""
    from erl_derain import config as cfglib
    from erl_derain.methods import get_method
    from erl_derain.run_config import RunConfig, make_record

    spec = get_method(FLAGS.method)
    run = cfglib.from_flags(RunConfig, "", FLAGS)
    cfg = cfglib.from_flags(spec.config_class, spec.flag_prefix, FLAGS)
    old = cfglib.deprecated_aliases_used(spec.config_class, spec.flag_prefix, FLAGS)
    if old:
        logging.warning("old flag names (accepted for now, to be removed): %s",
                        ", ".join(f"--{a} -> --{n}" for a, n in old))
        print("erl-derain: old flag names used: " + ", ".join(f"--{a} (now --{n})" for a, n in old), file=sys.stderr)
    if run.lr is None:  # the method's default, recorded: the run keeps it if the default changes
        run = dataclasses.replace(run, lr=spec.default_lr)
    return make_record(spec.name, run, cfg)


# -- flag validation (right after parsing: before any model is loaded or any data is read) -------------

# Integer flags and their lower bounds (None: the flag may be unset).
_AT_LEAST = {"checkpoint_every": 1, "log_every": 1, "image_summary_every": 0, "keep_checkpoints": 1, "stop_after": 0, "shuffle_buffer": 1,
             "cache_mb": 0, "logical_cpus": 0, "crop_border": 0, "eval_crop_size": 1, "max_images": 1, "figures": 0,
             "tile": 0, "tile_overlap": 0, "tile_batch": 1, "version": 0, "renders_per_image": 1, "rain_layers": 1, "max_pixels": 1,
             "seed": 0}
# Upper bounds: the seed NumPy and Keras take; every integer flag fits 64 bits (TensorFlow's int64).
_AT_MOST = {"seed": 2**32 - 1}
_INT64 = 2**63 - 1
# Shared run settings (train) and their lower bounds; "> 0" for those that must be positive numbers.
_RUN_AT_LEAST = {"batch_size": 1, "crop_size": 1, "lr_plateau_window": 0, "lr_plateau_patience": 1}
_RUN_POSITIVE = ("lr", "lr_decay_factor", "lr_plateau_factor")


def verb_flags(verb: str) -> tuple[str, ...]:
    """The flags ``verb`` reads (what ``erl-derain <verb> --help`` lists)."""
    from erl_derain import config as cfglib
    from erl_derain.methods import config_classes
    from erl_derain.run_config import RunConfig

    if verb == "train":
        names = ["method", *cfglib.flag_names(RunConfig).values(), *_TRAIN_JOB]
        for cls, spec in config_classes().items():
            names += cfglib.flag_names(cls, spec.flag_prefix).values()
        return tuple(dict.fromkeys(names))
    own = _method_verbs()
    if verb in own:
        return tuple(own[verb][1].flags)
    return tuple(VERB_HELP[verb][1])


def _run_dir(flag: str, path: str) -> None:
    """A folder holding a run (local or a file-system URL, ``fileio``)."""
    from erl_derain import fileio

    try:
        if fileio.isfile(os.path.join(path, "config.json")):
            return
        what = "does not exist" if not fileio.exists(path) else "holds no config.json"
    except OSError as e:  # a URL whose file system is unknown or unreachable
        raise UsageError(f"--{flag}={path}: {e.strerror or e}") from None
    raise UsageError(f"--{flag}={path} {what}: not a training run of erl_derain (expected config.json and "
                     "checkpoints/ there)")


def _writable(flag: str, path: str) -> None:
    from erl_derain.fileio import check_writable_folder

    try:
        check_writable_folder(path)
    except ValueError as e:
        raise UsageError(f"--{flag}={path}: {e}") from None


def _check_tiles(verb: str) -> None:
    tile = FLAGS.tile if verb == "derain" or FLAGS["tile"].present else EVAL_TILE
    overlap = FLAGS.tile_overlap
    if tile > 0 and overlap >= tile:
        raise UsageError(f"--tile_overlap={overlap} must be smaller than --tile={tile} (tiles overlap their neighbours "
                         "by that much; --tile=0: whole images)")
    from erl_derain.inference import SELF_ENSEMBLE_VIEWS

    if FLAGS.self_ensemble not in SELF_ENSEMBLE_VIEWS:
        raise UsageError(f"--self_ensemble={FLAGS.self_ensemble}: the number of mirrored views, one of "
                         f"{', '.join(map(str, SELF_ENSEMBLE_VIEWS))}")


def _check_datasets(verb: str) -> None:
    """``--dataset``: each name one TFDS knows (the catalog registers erl_derain's), each ``folder:`` an
    existing folder; ``--clean_dir`` (synthetic_rain on your photos) an existing folder. Names only:
    nothing is prepared or read."""
    from erl_derain.data.streams import FOLDER_PREFIX

    if verb in ("evaluate", "compare") and not FLAGS["dataset"].present:
        return  # each run's own dataset
    value = FLAGS.dataset or ""
    given = _split_list(value) if verb == "evaluate" else [value.strip()]
    if not any(given):
        raise UsageError(f"--dataset={value!r}: give a dataset name (erl-derain prepare --help) or folder:/path")
    known = None
    for dataset in given:
        if dataset.startswith(FOLDER_PREFIX):
            path = os.path.expanduser(dataset[len(FOLDER_PREFIX):])
            if verb != "prepare" and not os.path.isdir(path):
                raise UsageError(f"--dataset={dataset}: no such folder (expected rainy/ and clean/ sub-folders, "
                                 "or <split>/rainy and <split>/clean)")
            continue
        if known is None:
            import tensorflow_datasets as tfds

            from erl_derain import datasets

            known = set(tfds.list_builders(with_community_datasets=False))
        name = dataset.split("/")[0].split(":")[0]
        if name not in known:
            raise UsageError(f"--dataset={dataset}: unknown dataset {name!r} (erl_derain's: "
                             f"{', '.join(datasets.available_builders())}; or folder:/path with rainy/ and clean/)")
        if name == "synthetic_rain" and FLAGS.clean_dir and not os.path.isdir(FLAGS.clean_dir):
            raise UsageError(f"--clean_dir={FLAGS.clean_dir}: no such folder (the clean photos synthetic_rain "
                             "renders rain over)")


def _check_run_settings(record) -> None:
    run = record.run
    for name, low in _RUN_AT_LEAST.items():
        if getattr(run, name) < low:
            raise UsageError(f"--{name}={getattr(run, name)} must be at least {low}")
    for name in _RUN_POSITIVE:
        value = getattr(run, name)
        if value is not None and not value > 0:
            raise UsageError(f"--{name}={value} must be a positive number")
    if run.min_lr < 0:
        raise UsageError(f"--min_lr={run.min_lr} must be >= 0")
    if not 0 <= run.rain_free_fraction <= 1:
        raise UsageError(f"--rain_free_fraction={run.rain_free_fraction} must be in [0, 1] (a fraction of the pairs)")
    for name in ("stage_steps", "stage_epochs", "lr_decay_epochs", "lr_decay_steps", "lr_linear_decay_epochs"):
        values = getattr(run, name) or ()
        if any(not v >= 0 for v in values):
            raise UsageError(f"--{name}={','.join(map(str, values))}: values must be >= 0")


_VALIDATED: dict = {}


def validate_flags(verb: str) -> None:
    """Check the flags ``verb`` reads (``UsageError`` naming the flag): ranges, combinations, required
    flags, run folders that must hold a run, output folders that must be writable. Cheap: nothing is
    loaded, no data is read; called by ``main`` right after parsing."""
    from erl_derain.config import ConfigError
    from erl_derain.methods import MethodError

    global FLAGS_VERB
    FLAGS_VERB = verb
    _VALIDATED.clear()
    names = set(verb_flags(verb))
    for name in sorted(names):
        value = getattr(FLAGS, name)
        texts = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
        if any(isinstance(v, str) and "\x00" in v for v in texts):  # (os.path raises on one)
            raise UsageError(f"--{name}={value!r} holds a NUL character")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT64:
            raise UsageError(f"--{name}={value} is out of range (at most {_INT64} in magnitude)")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{name}={value} must be a finite number")
    for name, low in _AT_LEAST.items():
        value = getattr(FLAGS, name) if name in names else None
        if value is not None and value < low:
            raise UsageError(f"--{name}={value} must be at least {low}")
    for name, high in _AT_MOST.items():
        value = getattr(FLAGS, name) if name in names else None
        if value is not None and value > high:
            raise UsageError(f"--{name}={value} must be at most {high}")
    if "progress_every" in names:
        from erl_derain.progress import parse_every

        try:
            parse_every(FLAGS.progress_every)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if "every_nth" in names:
        from erl_derain import video

        try:
            video.check_settings(FLAGS.every_nth, FLAGS.max_frames, FLAGS.temporal, FLAGS.video_codec)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if names >= set(_INFER):
        _check_tiles(verb)
    if "precision" in names and FLAGS.precision == "bfloat16" and not (verb == "derain" and FLAGS.server):
        from erl_derain import precision

        reason = precision.bfloat16_unavailable()
        if reason:
            raise UsageError(f"--precision=bfloat16: {reason}")
    if verb in ("train", "evaluate", "compare", "prepare"):
        _check_datasets(verb)
    if "output_dir" in names and FLAGS.output_dir:
        from erl_derain import fileio

        if fileio.is_remote(FLAGS.output_dir):
            raise UsageError(f"--output_dir={FLAGS.output_dir}: images are written to a local folder (photos, videos "
                             "and generated images stay on this machine's disk; run folders, exports and evaluation "
                             "outputs may be file-system URLs)")
    if "data_dir" in names and FLAGS.data_dir:
        from erl_derain.data.streams import DatasetError, check_data_dir

        try:
            check_data_dir(FLAGS.data_dir)
        except DatasetError as e:
            raise UsageError(str(e)) from None
    if verb in ("derain", "evaluate", "export") and FLAGS.pretrained is not None:
        from erl_derain.pretrained import PretrainedError, resolve

        if FLAGS.model_dir:
            raise UsageError(f"--pretrained={FLAGS.pretrained} is a bundled model, --model_dir={FLAGS.model_dir} a "
                             "run: give one of them, not both")
        try:
            resolve(FLAGS.pretrained)
        except PretrainedError as e:
            raise UsageError(str(e)) from None
    if verb == "train":
        _writable("model_dir", _require("model_dir"))
        try:
            record = _record_from_flags()
        except (ConfigError, MethodError, ValueError) as e:
            raise UsageError(str(e)) from None
        _check_run_settings(record)
        _VALIDATED["record"] = record
    elif verb == "evaluate":
        for model_dir in _split_list(FLAGS.model_dir or ""):
            _run_dir("model_dir", model_dir)
        if not FLAGS.network:
            raise UsageError("--network: give the network(s) to score (default: derain)")
        if FLAGS.output:
            _writable("output", FLAGS.output)
    elif verb == "compare":
        for flag in ("baseline", "candidate"):
            _run_dir(flag, _require(flag))
        if FLAGS.eval_protocol != "full_y":
            raise UsageError(f"compare dissects whole images on the Y channel; --eval_protocol={FLAGS.eval_protocol} "
                             "is for evaluate")
        if FLAGS.output:
            _writable("output", FLAGS.output)
    elif verb == "derain":
        if FLAGS.server:
            _require("model_name")
            _require("output_dir")
            if FLAGS.self_ensemble != 1:
                raise UsageError("--self_ensemble runs the network several times per image here; with --server the "
                                 "model runs in TF Serving, once per image: leave --self_ensemble at 1")
            if FLAGS.precision != "float32":
                raise UsageError(f"--precision={FLAGS.precision} rebuilds a local model; with --server the model "
                                 "runs in TF Serving as exported (export it with --precision instead)")
            if FLAGS.tile_batch != 1:
                raise UsageError(f"--tile_batch={FLAGS.tile_batch} stacks tiles into calls of a local model; with "
                                 "--server each tile is one request: leave --tile_batch at 1")
        elif FLAGS.model_dir:
            _run_dir("model_dir", FLAGS.model_dir)
    elif verb == "export":
        export_base = _require("export_base")
        from erl_derain.serving import formats

        try:
            formats.parse_export_size(FLAGS.export_size, FLAGS.format)
            if FLAGS.format != "saved_model":
                formats.require_packages(FLAGS.format)
        except formats.ExportFormatError as e:
            raise UsageError(str(e)) from None
        if FLAGS.pretrained is None:
            if not FLAGS.model_dir:
                raise UsageError("--model_dir (a run) or --pretrained (the bundled model) is required for "
                                 "`erl-derain export`")
            _run_dir("model_dir", FLAGS.model_dir)
        from erl_derain.serving.server_config import serving_root

        try:
            root, _ = serving_root(export_base, FLAGS.serving_root)
        except ValueError as e:
            raise UsageError(str(e)) from None
        _writable("export_base", export_base)
        _writable("serving_root" if FLAGS.serving_root else "export_base", root)
    elif verb == "prepare":
        _require("dataset")
    elif verb == "synthesize":
        clean_dir, output_dir = _require("clean_dir"), _require("output_dir")
        if not os.path.isdir(clean_dir):
            raise UsageError(f"--clean_dir={clean_dir}: no such folder")
        _writable("output_dir", output_dir)
        if any(os.path.realpath(os.path.join(output_dir, sub)) == os.path.realpath(clean_dir)
               for sub in ("rainy", "clean")):
            raise UsageError(f"--output_dir={output_dir} would write over --clean_dir={clean_dir} (its rainy/ and "
                             "clean/ sub-folders receive the pairs): choose another --output_dir")
        for flag, low, high in (("rain_density", 0.0, 1.0), ("rain_length", 0.0, None), ("rain_intensity", 0.0, None)):
            value = getattr(FLAGS, flag)
            if value is not None and not (value > low and (high is None or value <= high)):
                bound = f"in (0, {high:g}]" if high is not None else "a positive number"
                raise UsageError(f"--{flag}={value} must be {bound}")
    else:  # a method's own verb: what it shares with the others
        if "model_dir" in names and FLAGS.model_dir:
            _run_dir("model_dir", FLAGS.model_dir)
        if "output_dir" in names and FLAGS.output_dir:
            _writable("output_dir", FLAGS.output_dir)


def _apply_flags() -> None:
    """Settings that take effect for the whole process once the flags are valid."""
    from erl_derain.data import image_io

    image_io.set_max_pixels(FLAGS.max_pixels)


def _make_strategy(record):
    """The --strategy (and --logical_cpus, --mixed_precision), set up before TensorFlow runs any op."""
    from erl_derain import distribute

    try:
        distribute.split_cpu(FLAGS.logical_cpus)
        strategy = distribute.make_strategy(record.run.strategy, tpu=FLAGS.tpu)
    except distribute.DistributeError as e:
        raise UsageError(str(e)) from e
    distribute.set_precision(record.run.mixed_precision)
    return strategy


def cmd_train():
    from erl_derain import distribute, inputs, training
    from erl_derain.methods import make_trainer

    model_dir = _require("model_dir")
    record = _VALIDATED.get("record") or _record_from_flags()
    strategy = _make_strategy(record)
    keras_seed(record.run.seed)
    with strategy.scope():
        trainer = make_trainer(record)
    global_batch = record.run.batch_size * strategy.num_replicas_in_sync
    split = FLAGS.split or "train"
    per_stage = record.run.stage_steps or record.run.stage_epochs
    if per_stage and len(per_stage) != len(trainer.stages):
        flag = "--stage_steps" if record.run.stage_steps else "--stage_epochs"
        schedule = f" of {trainer.schedule_flag}" if trainer.schedule_flag else ""
        raise UsageError(f"{flag} has {len(per_stage)} value(s) but the schedule{schedule} has {len(trainer.stages)} "
                         f"stage(s): {', '.join(s.name for s in trainer.stages)}")
    stage_steps = inputs.stage_steps(record, trainer, global_batch, split)
    multiple = trainer.pad_multiple
    if record.run.crop_size % multiple:
        raise UsageError(f"--crop_size={record.run.crop_size} must be a multiple of {multiple} (the network "
                         f"down-samples {multiple}x)")
    cache = None if FLAGS.cache_mb is None else FLAGS.cache_mb * 2**20
    _PROGRESS["kept"] = (f"the last checkpoint in {os.path.join(model_dir, 'checkpoints')} is kept; the same command "
                         "resumes from it")
    # every source is opened once here: a bad dataset fails before any training work starts
    dataset_fn = inputs.training_stream(record, global_batch=global_batch, split=split,
                                        shuffle_buffer=FLAGS.shuffle_buffer, cache_limit_bytes=cache)
    run = record.run
    plateau = training.PlateauSchedule(run.lr_plateau_window, run.lr_plateau_patience, run.lr_plateau_factor,
                                       run.min_lr)
    try:
        summary = training.train(trainer, record, dataset_fn, model_dir=model_dir, stage_steps=stage_steps,
                                 batch_size=global_batch, jit_compile=run.jit_compile,
                                 checkpoint_every=FLAGS.checkpoint_every, log_every=FLAGS.log_every,
                                 keep_checkpoints=FLAGS.keep_checkpoints, plateau=plateau,
                                 lr_schedule=inputs.lr_schedule(record, global_batch, split), on_nan=FLAGS.on_nan,
                                 strategy=strategy, stop_after=FLAGS.stop_after, init_from=run.init_from,
                                 force_new_config=FLAGS.force_new_config, progress_every=FLAGS.progress_every,
                                 image_summary_every=FLAGS.image_summary_every,
                                 image_batch=_image_summary_batch(record, dataset_fn))
    except BaseException:  # Ctrl-C or a data error: say which checkpoint is kept (main reports the error)
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        _PROGRESS["kept"] = (f"the last checkpoint, {latest}, is kept; the same command resumes from it" if latest
                             else f"no checkpoint was written yet in {os.path.join(model_dir, 'checkpoints')}")
        raise
    if summary.get("skipped_batches"):
        print(f"Skipped {len(summary['skipped_batches'])} batch(es) with a non-finite loss: "
              f"{summary['skipped_batches'][:10]}", flush=True)
    if summary.get("stopped_early"):
        print(f"Stopped after {FLAGS.stop_after} steps (--stop_after) at global step {summary['global_step']}; "
              f"the same command resumes from {os.path.join(model_dir, 'checkpoints')}", flush=True)
        return 0
    if not distribute.is_chief(strategy):
        print(f"Training done in {summary['seconds']:.1f} s ({summary['global_step']} steps) on this worker; "
              "the chief (worker 0) writes the checkpoints", flush=True)
        return 0
    print(f"Training done in {summary['seconds']:.1f} s ({summary['global_step']} steps); "
          f"checkpoints in {os.path.join(model_dir, 'checkpoints')}", flush=True)
    if FLAGS.evaluate_after:
        _evaluate(trainer.inference_model(), model_dir, run.dataset, FLAGS.eval_split,
                  run.clean_dir)
    return 0


def _image_summary_batch(record, dataset_fn):
    """--image_summary_every's validation batch: --eval_split's first images, else the first training batch."""
    from erl_derain import inputs

    if FLAGS.image_summary_every <= 0:
        return None
    return inputs.image_summary_batch(record, FLAGS.eval_split,
                                      fallback=lambda: {k: v.numpy() for k, v in next(iter(dataset_fn(0))).items()})


def keras_seed(seed: int):
    import keras

    keras.utils.set_random_seed(seed)


def _predict_fn(model):
    """The inference model (an InferenceModel) averaged over --self_ensemble mirrored views, its call
    compiled (XLA with --jit_compile; auto: on GPU; one compilation per image size); it keeps the
    model's pad multiple."""
    import tensorflow as tf

    from erl_derain.inference import InferenceModel, as_inference_model, flip_ensemble
    from erl_derain.training import resolve_jit_compile

    ensemble = flip_ensemble(as_inference_model(model), FLAGS.self_ensemble)
    compiled = tf.function(ensemble, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
                           jit_compile=resolve_jit_compile(FLAGS.jit_compile))
    return InferenceModel(compiled, ensemble.pad_multiple, name=f"{ensemble.name}_compiled")


def _eval_dataset(dataset, split, clean_dir=None, manual_dir=None, min_size=None, clean_exclude=None):
    from erl_derain import inputs

    return inputs.evaluation_dataset(dataset, split, clean_dir=clean_dir, data_dir=FLAGS.data_dir,
                                     manual_dir=manual_dir or FLAGS.manual_dir, min_size=min_size,
                                     clean_exclude=FLAGS.clean_exclude if clean_exclude is None else clean_exclude)


# evaluate / compare without --tile: whole images up to this side (every standard benchmark's test
# images: Rain100H/L 481x321, DDN 512x384, DID 512x512, AGAN up to 720x480), tiles of it above.
EVAL_TILE = 1024


def _eval_tile() -> int:
    """Papers evaluate whole images: evaluate tiles only images larger than EVAL_TILE (or --tile)."""
    return FLAGS.tile if FLAGS["tile"].present else EVAL_TILE


def _absolute_dataset(dataset: str) -> str:
    """``folder:`` datasets with their absolute path (what a result records); names as they are."""
    from erl_derain.data.pipelines import FOLDER_PREFIX

    if dataset.startswith(FOLDER_PREFIX):
        return FOLDER_PREFIX + os.path.abspath(os.path.expanduser(dataset[len(FOLDER_PREFIX):]))
    return dataset


def _eval_settings(dataset: str, split: str, clean_dir: str | None = None) -> dict:
    """What an evaluate / compare result depends on besides the model(s), recorded with it (paths
    absolute, so the record still says which data it was when read from elsewhere)."""
    settings = {"dataset": _absolute_dataset(dataset), "split": split, "y_rounding": FLAGS.y_rounding,
                "crop_border": FLAGS.crop_border, "self_ensemble": FLAGS.self_ensemble,
                "eval_protocol": FLAGS.eval_protocol}
    if clean_dir:
        settings["clean_dir"] = os.path.abspath(clean_dir)
    if FLAGS.eval_protocol == "ten_crop_rgb":  # (Y rounding and crop_border do not apply to it)
        settings["eval_crop_size"] = FLAGS.eval_crop_size
    return settings


def _safe_name(dataset: str) -> str:
    return dataset.replace("folder:", "folder_").replace("/", "_").strip("_")


def _pretrained_tag() -> str:
    """``pretrained`` for the default bundled model, ``pretrained_<name>`` for another (output folders)."""
    from erl_derain.pretrained import DEFAULT, resolve

    name = resolve(FLAGS.pretrained)
    return "pretrained" if name == DEFAULT else f"pretrained_{name}"


def _load_run(model_dir: str | None):
    """``(trainer, record)`` of a run, or of the bundled pretrained model when ``model_dir`` is None;
    its networks rebuilt in --precision (``precision.in_precision``)."""
    from erl_derain import precision
    from erl_derain.training import load_trainer

    if model_dir:
        trainer, record = load_trainer(model_dir)
    else:
        from erl_derain.pretrained import load_pretrained_trainer

        from erl_derain.pretrained import resolve

        name = resolve(FLAGS.pretrained)
        trainer, info = load_pretrained_trainer(name)
        record = info["record"]
        print(f"Using the bundled model {name} (erl_derain/pretrained/README.md); --model_dir selects a run, "
              "--pretrained=fast the fast one.", flush=True)
    if FLAGS.precision != "float32":
        trainer = precision.in_precision(trainer, record, FLAGS.precision)
        print(f"Running the network in {FLAGS.precision} (float32 weights, {precision.POLICY[FLAGS.precision]} "
              "policy; inputs and outputs float32).", flush=True)
    return trainer, record


def _evaluate(model, model_dir, dataset, split, clean_dir=None, output=None, network="derain",
              input_key="rainy", failures=None):
    """Evaluate one model on one dataset; rows are written to per_image.csv as they finish, pairs that
    cannot be scored go to ``failures`` (named, the others go on). Returns the summary. A folder of
    photos without clean images is scored with no-reference metrics instead (NIQE / BRISQUE). The
    outputs (``output``, ``model_dir``) may be file-system URLs (``fileio``)."""
    from erl_derain import evaluation, fileio, inputs

    files = inputs.no_reference_images(dataset, split)
    if files is not None:  # photos without clean images (real rain): no-reference NIQE / BRISQUE
        if FLAGS.eval_protocol != "full_y" or input_key != "rainy":
            raise UsageError(f"--dataset={dataset} has no clean images: it is scored with no-reference metrics on "
                             "the de-raining network's output only (no --eval_protocol, no other --network)")
        print(f"Evaluating {model_dir or 'the bundled model'} on {dataset} ({len(files)} photos without clean "
              "images: no-reference NIQE and BRISQUE of the photo and of the output):", flush=True)
        out_dir = output or (os.path.join(model_dir, f"eval_{_safe_name(dataset)}") if model_dir else
                             f"eval_{_pretrained_tag()}_{_safe_name(dataset)}")
        return evaluation.no_reference_evaluation(
            _predict_fn(model), files, out_dir,
            extra={**_eval_settings(dataset, split), "model_dir": fileio.abspath(model_dir) if model_dir else None},
            tile=_eval_tile(), tile_overlap=FLAGS.tile_overlap, tile_batch=FLAGS.tile_batch, max_images=FLAGS.max_images,
            figures=FLAGS.figures)
    ten_crop = FLAGS.eval_protocol == "ten_crop_rgb"
    min_size = max(FLAGS.eval_crop_size, evaluation.SSIM_WINDOW) if ten_crop else evaluation.min_side(FLAGS.crop_border)
    suffix = "" if network == "derain" else f"_{network}"
    out_dir = output or (os.path.join(model_dir, f"eval_{_safe_name(dataset)}_{split}{suffix}") if model_dir else
                         f"eval_{_pretrained_tag()}_{_safe_name(dataset)}_{split}{suffix}")
    csv_path = os.path.join(out_dir, "per_image.csv")
    finished = _PROGRESS.setdefault("finished", [])  # earlier results of this command (cross-dataset)
    before = f"; finished before: {', '.join(finished)}" if finished else ""
    _PROGRESS["kept"] = f"no per-image row was computed yet for {csv_path}{before}"
    _PROGRESS["data"] = [(dataset, split)]
    ds = _eval_dataset(dataset, split, clean_dir, min_size=min_size)
    what = "" if network == "derain" else f" network {network} (fed the {input_key} images)"
    who = model_dir or "the bundled model"
    all_failures, failures = failures, []  # this dataset's (its metrics.json lists them), added to the command's
    rows_file = evaluation.RowWriter(csv_path)

    def writer(row):
        rows_file(row)
        _PROGRESS["kept"] = f"the {len(rows_file.rows)} per-image row(s) computed so far are in {csv_path}{before}"

    if ten_crop:
        print(f"Evaluating {who}{what} on {dataset} [{split}] (the ten {FLAGS.eval_crop_size}x"
              f"{FLAGS.eval_crop_size} crops of each image, RGB, unrounded: --eval_protocol=ten_crop_rgb):", flush=True)
        rows = evaluation.evaluate_ten_crop(_predict_fn(model), ds, crop_size=FLAGS.eval_crop_size,
                                            max_images=FLAGS.max_images, input_key=input_key, on_row=writer,
                                            failures=failures)
    else:
        print(f"Evaluating {who}{what} on {dataset} [{split}] (full-size images, Y channel "
              f"{FLAGS.y_rounding}):", flush=True)
        rows = evaluation.evaluate(_predict_fn(model), ds, rounded=FLAGS.y_rounding == "rounded",
                                   crop_border=FLAGS.crop_border, tile=_eval_tile(), tile_overlap=FLAGS.tile_overlap, tile_batch=FLAGS.tile_batch,
                                   max_images=FLAGS.max_images, input_key=input_key, on_row=writer,
                                   failures=failures)
    if all_failures is not None:
        all_failures.extend(failures)
    summary = evaluation.summarize(rows)
    settings = {**_eval_settings(dataset, split, clean_dir), "network": network, "network_input": input_key}
    extra = {**settings, "model_dir": fileio.abspath(model_dir) if model_dir else None}
    if not model_dir:
        from erl_derain.pretrained import resolve

        extra["pretrained"] = resolve(FLAGS.pretrained)
    if failures:
        extra["failed"] = [{"name": n, "error": e} for n, e in failures]
    csv_path, json_path = evaluation.write_results(rows, summary, out_dir, extra=extra)
    finished.append(json_path)
    if model_dir and fileio.isdir(model_dir) and network == "derain":  # the latest evaluation, with its settings
        evaluation.write_json(os.path.join(model_dir, "metrics.json"), {**settings, **summary})
    if ten_crop:
        print(f"Mean over {summary['num_crops']} crops of {summary['num_images']} images: RGB-PSNR "
              f"{summary['input_psnr_rgb']:.2f} (rainy) -> {summary['psnr_rgb']:.2f} dB ({summary['gain_psnr_rgb']:+.2f}), "
              f"RGB-SSIM {summary['input_ssim_rgb']:.4f} -> {summary['ssim_rgb']:.4f}")
    else:
        print(f"Mean over {summary['num_images']} images: Y-PSNR {summary['input_psnr_y']:.2f} (rainy) -> "
              f"{summary['psnr_y']:.2f} dB ({summary['gain_psnr_y']:+.2f}), Y-SSIM {summary['input_ssim_y']:.4f} -> "
              f"{summary['ssim_y']:.4f}; RGB PSNR {summary['input_psnr_rgb']:.2f} -> {summary['psnr_rgb']:.2f} dB")
    failed = f"; {len(failures)} pair(s) failed (listed above)" if failures else ""
    print(f"Per-image results: {csv_path}; summary: {json_path}{failed}", flush=True)
    return summary


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def cmd_evaluate():
    from erl_derain import evaluation, fileio

    model_dirs = _split_list(FLAGS.model_dir or "") or [None]  # None: the bundled model
    datasets = _split_list(FLAGS.dataset) if FLAGS["dataset"].present else []
    split = FLAGS.split or "test"
    networks = list(dict.fromkeys(FLAGS.network or ["derain"]))
    if networks != ["derain"] and (len(model_dirs) > 1 or len(datasets) > 1):
        raise UsageError("--network scores other networks of one --model_dir on one --dataset")
    failures = []
    if len(model_dirs) == 1 and len(datasets) <= 1:
        trainer, record = _load_run(model_dirs[0])
        if datasets:
            dataset, clean_dir = datasets[0], FLAGS.clean_dir
        else:
            dataset, clean_dir = record.run.dataset, FLAGS.clean_dir or record.run.clean_dir
        offered = (trainer.evaluation_networks() if hasattr(trainer, "evaluation_networks")
                   else {"derain": (trainer.inference_model(), "rainy")})
        unknown = [n for n in networks if n not in offered]
        if unknown:
            raise UsageError(f"--network={','.join(unknown)}: {model_dirs[0] or 'the bundled model'} "
                             f"({record.method}) offers {', '.join(offered)}")
        results = {}
        for name in networks:
            model, input_key = offered[name]
            output = FLAGS.output if len(networks) == 1 or not FLAGS.output else os.path.join(FLAGS.output, name)
            results[name] = _evaluate(model, model_dirs[0], dataset, split, clean_dir,
                                      output=output, network=name, input_key=input_key, failures=failures)
        if len(networks) > 1:
            channel = "Y" if all("psnr_y" in s for s in results.values()) else "RGB"
            key = channel.lower()
            print(f"network             input   {channel}-PSNR   {channel}-SSIM")
            for name, s in results.items():
                print(f"{name:<19} {offered[name][1]:<7} {s['psnr_' + key]:7.2f}   {s['ssim_' + key]:.4f}")
        return EXIT_FAILED if failures else EXIT_OK
    # Cross-dataset evaluation: every model on every dataset (default: each model's own training set).
    from erl_derain.inputs import no_reference_images

    unpaired = [d for d in datasets if no_reference_images(d, split) is not None]
    if unpaired:
        raise UsageError(f"--dataset={','.join(unpaired)} has no clean images: the cross-dataset table is of PSNR/SSIM; "
                         "evaluate one model on it (no-reference NIQE/BRISQUE), or compare two")
    runs = [(m, *_load_run(m)) for m in model_dirs]
    if not datasets:
        datasets = list(dict.fromkeys(record.run.dataset for _, _, record in runs))
    trained_on = [record.run.dataset for _, _, record in runs]
    labels = [t if trained_on.count(t) == 1 else f"{t} ({os.path.basename(os.path.normpath(m or 'pretrained'))})"
              for t, (m, _, _) in zip(trained_on, runs)]
    results = {}
    for label, (model_dir, trainer, _) in zip(labels, runs):
        model = trainer.inference_model()
        for dataset in datasets:
            results[(label, dataset)] = _evaluate(model, model_dir, dataset, split, failures=failures)
    output = FLAGS.output or "cross_dataset_eval"
    md_path, csv_path = evaluation.cross_dataset_table(results, output)
    print(fileio.read_text(md_path))
    print(f"Cross-dataset table: {md_path} and {csv_path}")
    return EXIT_FAILED if failures else EXIT_OK


def cmd_compare():
    from erl_derain import evaluation, plots
    from erl_derain.training import load_trainer

    baseline_dir, candidate_dir = _require("baseline"), _require("candidate")
    base_trainer, base_record = load_trainer(baseline_dir)
    cand_trainer, cand_record = load_trainer(candidate_dir)
    if FLAGS["dataset"].present:
        dataset, clean_dir = FLAGS.dataset, FLAGS.clean_dir
    else:
        dataset, clean_dir = cand_record.run.dataset, FLAGS.clean_dir or cand_record.run.clean_dir
    split = FLAGS.split or "test"
    from erl_derain.inputs import no_reference_images

    files = no_reference_images(dataset, split)
    if files is not None:  # photos without clean images (real rain): no-reference NIQE / BRISQUE
        out_dir = FLAGS.output or os.path.join(
            candidate_dir, f"compare_{os.path.basename(os.path.normpath(baseline_dir))}_{_safe_name(dataset)}")
        extra = {**_eval_settings(dataset, split), "baseline": baseline_dir, "candidate": candidate_dir,
                 "baseline_method": base_record.method, "candidate_method": cand_record.method}
        print(f"Comparing candidate {candidate_dir} with baseline {baseline_dir} on {dataset} ({len(files)} photos "
              "without clean images: no-reference NIQE and BRISQUE):", flush=True)
        evaluation.no_reference_comparison(
            _predict_fn(base_trainer.inference_model()), _predict_fn(cand_trainer.inference_model()), files, out_dir,
            extra=extra, tile=_eval_tile(), tile_overlap=FLAGS.tile_overlap, tile_batch=FLAGS.tile_batch, max_images=FLAGS.max_images,
            figures=FLAGS.figures)
        return 0
    ds = _eval_dataset(dataset, split, clean_dir)
    print(f"Comparing candidate {candidate_dir} with baseline {baseline_dir} on {dataset} [{split}]:", flush=True)
    rows, kept = evaluation.compare(
        _predict_fn(base_trainer.inference_model()), _predict_fn(cand_trainer.inference_model()), ds,
        rounded=FLAGS.y_rounding == "rounded", crop_border=FLAGS.crop_border, tile=_eval_tile(),
        tile_overlap=FLAGS.tile_overlap, tile_batch=FLAGS.tile_batch, max_images=FLAGS.max_images, keep_images=FLAGS.figures)
    summary = evaluation.summarize_comparison(rows)
    out_dir = FLAGS.output or os.path.join(
        candidate_dir, f"compare_{os.path.basename(os.path.normpath(baseline_dir))}_{_safe_name(dataset)}_{split}")
    csv_path, json_path = evaluation.write_results(
        rows, summary, out_dir, extra={**_eval_settings(dataset, split), "baseline": baseline_dir,
                                       "candidate": candidate_dir, "baseline_method": base_record.method,
                                       "candidate_method": cand_record.method})
    figures = evaluation.comparison_figures(rows, kept, summary, out_dir, dataset=dataset)
    print(f"Candidate improves {summary['num_all_improved']}/{summary['num_all']} images "
          f"({summary['improved_proportion']:.1%}); hard {summary['num_hard_improved']}/{summary['num_hard']}, "
          f"easy {summary['num_easy_improved']}/{summary['num_easy']}; mIoR {summary['mIoR']:.3f}, "
          f"mIoB {summary['mIoB']:.3f}; Y-PSNR {summary['baseline_psnr_y']:.2f} -> {summary['candidate_psnr_y']:.2f} dB")
    print(f"Per-image results: {csv_path}; summary: {json_path}; {len(figures)} figures in {out_dir}", flush=True)
    return 0



def cmd_prepare():
    import tensorflow_datasets as tfds

    from erl_derain.data import pipelines

    from erl_derain import datasets, inputs

    dataset = _require("dataset")
    source = inputs.dataset_source(dataset, FLAGS.clean_dir, FLAGS.data_dir, FLAGS.clean_exclude)
    if isinstance(source, str):
        if source.startswith(pipelines.FOLDER_PREFIX):
            raise UsageError(f"--dataset={source} is a folder: it is read directly, nothing to prepare")
        builder = datasets.load_builder(source, FLAGS.data_dir)
    else:
        builder = source
    if builder.is_prepared():
        print(f"{builder.name} is already prepared in {builder.data_dir}")
    else:
        tfds.enable_progress_bar()
        pipelines.prepare(builder, manual_dir=FLAGS.manual_dir)
    splits = ", ".join(f"{k}: {v.num_examples}" for k, v in sorted(builder.info.splits.items()))
    print(f"Prepared {builder.name} in {builder.data_dir} ({splits}); train with --dataset={dataset}"
          + (f" --data_dir={FLAGS.data_dir}" if FLAGS.data_dir else ""))
    return 0


def _photo_jobs(args: list[str], output_dir: str):
    """The checked plan of ``derain`` (``photos``: inputs, output names, refusals) and the arguments
    that failed already (missing, no images); before any model is loaded."""
    from erl_derain import photos

    if not args:
        raise UsageError("give the photos or folders to de-rain: erl-derain derain [--model_dir=...] "
                         "[--output_dir=derained] photo.jpg folder/")
    files, failures, excluded = photos.expand_inputs(args, output_dir)
    for path, message in failures:
        photos.print_failure(path, message)
    if excluded:
        print(f"  ({len(excluded)} image(s) in --output_dir={output_dir} left out: outputs are never inputs)",
              file=sys.stderr, flush=True)
    if not files and not failures:
        raise UsageError(f"no photos to de-rain: every image given is in --output_dir={output_dir}, whose files are "
                         "outputs, never inputs; choose another --output_dir")
    jobs = photos.plan(files, output_dir, FLAGS.output_format)
    try:
        photos.check_plan(jobs, output_dir, overwrite=FLAGS.overwrite)
    except photos.PlanError as e:
        raise UsageError(str(e)) from None
    return jobs, failures


def _run_photos(jobs, failures, output_dir, loop, via=None) -> int:
    """Run the photo loop (``loop(jobs)`` -> (written, skipped, failures)) and report; Ctrl-C reports
    what was written (exit status 130)."""
    from erl_derain import photos

    _PROGRESS["kept"] = f"the photos written so far are in {output_dir} (each one whole)"
    try:
        written, skipped, more = loop(jobs)
    except photos.Interrupted as e:
        return photos.report(e.written, e.skipped, failures + e.failures, output_dir, via=via, interrupted=True)
    return photos.report(written, skipped, failures + more, output_dir, via=via)


def _derain_via_server(args: list[str]):
    from erl_derain import photos
    from erl_derain.serving import ServerUnavailable, derain_files_via_server

    output_dir, model_name = _require("output_dir"), _require("model_name")
    jobs, failures = _photo_jobs(args, output_dir)
    if not photos.pending(jobs, FLAGS.overwrite):
        return photos.report(0, len(jobs), failures, output_dir, via=FLAGS.server)

    def loop(jobs):
        try:
            return derain_files_via_server(
                FLAGS.server, model_name, None, output_dir, protocol=FLAGS.protocol, overwrite=FLAGS.overwrite,
                output_format=FLAGS.output_format, version=FLAGS.version, tile=FLAGS.tile,
                tile_overlap=FLAGS.tile_overlap, jobs=jobs)
        except (ServerUnavailable, ImportError) as e:
            raise CommandError(str(e)) from e

    return _run_photos(jobs, failures, output_dir, loop, via=FLAGS.server)


def cmd_derain(args: list[str]):
    from erl_derain import photos, video

    clips = [a for a in args if video.is_video(a) and not os.path.isdir(a)]  # video files: erl_derain/video.py
    missing = []  # a missing clip is a failure of its own (the other inputs go on)
    if clips:
        if FLAGS.server:
            raise UsageError(f"{clips[0]}: videos are de-rained with a local model, not via --server")
        args = [a for a in args if a not in clips]
        missing = [(c, "no such file") for c in clips if not os.path.isfile(c)]
        for clip, message in missing:
            photos.print_failure(clip, message)
        clips = [c for c in clips if os.path.isfile(c)]
        if not clips and not args:
            return photos.report(0, 0, missing, FLAGS.output_dir or "derained")
    if FLAGS.server:
        return _derain_via_server(args)
    output_dir = FLAGS.output_dir or "derained"
    jobs, failures = _photo_jobs(args, output_dir) if args or not clips else ([], [])
    for clip in clips:  # a video never replaces its input
        target, _ = video.output_path(clip, output_dir, FLAGS.video_codec)
        if os.path.realpath(target) == os.path.realpath(clip):
            raise UsageError(f"{clip}: its output would replace it (--output_dir={output_dir} holds it): choose "
                             "another --output_dir")
    if not photos.pending(jobs, FLAGS.overwrite) and not clips:
        return photos.report(0, len(jobs), failures, output_dir)
    trainer, _ = _load_run(FLAGS.model_dir)
    model = _predict_fn(trainer.inference_model())
    status = EXIT_OK
    if jobs or failures:
        run = photos.local_runner(model, tile=FLAGS.tile, overlap=FLAGS.tile_overlap, tile_batch=FLAGS.tile_batch)
        status = _run_photos(jobs, failures, output_dir, lambda jobs: photos.derain_photos(
            None, output_dir, run, output_format=FLAGS.output_format, overwrite=FLAGS.overwrite, jobs=jobs))
        if status == EXIT_INTERRUPTED:
            return status
    if clips:
        written, skipped, failed = video.derain_videos(
            clips, output_dir, video.local_frame_runner(model, tile=FLAGS.tile, overlap=FLAGS.tile_overlap,
                                               tile_batch=FLAGS.tile_batch),
            overwrite=FLAGS.overwrite, video_codec=FLAGS.video_codec, every_nth=FLAGS.every_nth,
            max_frames=FLAGS.max_frames, temporal=FLAGS.temporal, progress_every=FLAGS.progress_every)
        status = max(status, video.report(written, skipped, failed, output_dir))
    return max(status, EXIT_FAILED) if missing else status


def cmd_export():
    from erl_derain import fileio
    from erl_derain.serving import export_saved_model, formats, server_command_lines

    export_base = _require("export_base")
    size = formats.parse_export_size(FLAGS.export_size, FLAGS.format)  # (checked by validate_flags)
    trainer, record = _load_run(None if FLAGS.pretrained is not None else FLAGS.model_dir)
    # --precision is not part of the run's configuration: the export says which one its graph computes in
    metadata = {"method": record.method, "config": record.to_dict(), "precision": FLAGS.precision}
    if FLAGS.format != "saved_model":
        print(formats.describe(formats.export_file(
            trainer.inference_model(), export_base, FLAGS.format, size=size, version=FLAGS.version,
            metadata=metadata, overwrite=FLAGS.overwrite)))
        return
    path = export_saved_model(trainer.inference_model(), export_base, version=FLAGS.version,
                              metadata=metadata, overwrite=FLAGS.overwrite,
                              serving_root=FLAGS.serving_root, max_pixels=FLAGS.max_pixels)
    lines = server_command_lines(export_base, FLAGS.serving_root)
    root = FLAGS.serving_root or fileio.dirname(export_base)
    print(f"Exported SavedModel to {path}: signatures serving_default (images -> derained), derain_image "
          f"(image_bytes -> derained_png_bytes), metadata")
    print(f"Server files in {fileio.abspath(root)} (--serving_root{'' if FLAGS.serving_root else ': --export_base parent'}): "
          f"models.config, models.docker.config, batching_parameters.txt. Serve with:\n  "
          f"{lines['tensorflow_model_server']}\n  {lines['docker']}")


def cmd_synthesize():
    from erl_derain.data import rain_synthesis

    clean_dir = _require("clean_dir")
    output_dir = _require("output_dir")
    kwargs = {"layers": FLAGS.rain_layers, "accumulation": FLAGS.rain_accumulation}
    for flag, key in (("rain_density", "density"), ("rain_length", "length"), ("rain_intensity", "intensity")):
        if getattr(FLAGS, flag) is not None:
            kwargs[key] = getattr(FLAGS, flag)
    failures = []
    _PROGRESS["kept"] = f"the pairs written so far are in {output_dir}/rainy and {output_dir}/clean (each one whole)"
    try:
        pairs = rain_synthesis.synthesize_folder(clean_dir, output_dir, renders_per_image=FLAGS.renders_per_image,
                                                 seed=FLAGS.seed, failures=failures, progress=True, **kwargs)
    except rain_synthesis.Interrupted as e:
        print(f"Interrupted: wrote {len(e.pairs)} rainy/clean pairs to {output_dir}/rainy and {output_dir}/clean; "
              f"{len(failures)} clean image(s) failed", flush=True)
        return EXIT_INTERRUPTED
    failed = f"; {len(failures)} clean image(s) failed (listed above)" if failures else ""
    print(f"Wrote {len(pairs)} rainy/clean pairs to {output_dir}/rainy and {output_dir}/clean "
          f"(train on them with --dataset=folder:{output_dir}){failed}")
    return EXIT_FAILED if failures else EXIT_OK


def _from_data_pipeline(e) -> bool:
    """Whether a TF error came out of reading the data: raised while a tf.data iterator produced the next
    batch (a frame of ``tensorflow/python/data`` on the way, or an ``IteratorGetNext`` node inside a
    compiled step), not from the model's own computation."""
    import traceback

    if "IteratorGetNext" in str(e):
        return True
    marker = os.path.join("tensorflow", "python", "data", "")
    return any(marker in frame.f_code.co_filename for frame, _ in traceback.walk_tb(e.__traceback__))


def _tf_message(e) -> str:
    """The first line of a TF error without its node/function decorations."""
    text = getattr(e, "message", str(e))
    text = text.split("\n")[0]
    return text.split("}} ", 1)[-1].strip()





def main(argv):
    known = verbs()
    if len(argv) < 2 or argv[1] not in known:
        got = argv[1] if len(argv) > 1 else "nothing"
        print(help_text(), file=sys.stderr, end="")
        print(f"erl-derain: expected a verb ({', '.join(known)}), got {got}", file=sys.stderr)
        return EXIT_USAGE
    verb, args = argv[1], argv[2:]
    if not FLAGS["verbosity"].present:  # TFDS and TF log every file they open at INFO
        logging.set_verbosity(logging.WARNING)
    if args and verb != "derain":
        print(f"erl-derain {verb}: unexpected arguments {args} (flags are written --name=value)", file=sys.stderr)
        return EXIT_USAGE
    _PROGRESS.clear()
    try:
        validate_flags(verb)
    except UsageError as e:
        print(f"erl-derain {verb}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    _apply_flags()
    return _run_verb(verb, args)


def _run_verb(verb: str, args: list[str]) -> int:
    """Run a validated verb; errors become one line on stderr and the exit status (module docstring)."""
    from erl_derain.config import ConfigError
    from erl_derain.data.pipelines import DatasetError
    from erl_derain.data.streams import UnknownDatasetError
    from erl_derain.methods import MethodError
    from erl_derain.training import SettingsMismatch, TrainingError

    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "compare": cmd_compare, "export": cmd_export,
                "prepare": cmd_prepare, "synthesize": cmd_synthesize}
    try:
        if verb == "derain":
            return cmd_derain(args)
        if verb in commands:
            return commands[verb]() or EXIT_OK
        _, verb_spec = _method_verbs()[verb]
        return verb_spec.run(FLAGS) or EXIT_OK
    except KeyboardInterrupt:
        kept = _PROGRESS.get("kept")
        print(f"erl-derain {verb}: interrupted" + (f"; {kept}" if kept else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ConfigError, MethodError, SettingsMismatch, UnknownDatasetError) as e:
        logging.debug("error", exc_info=True)
        print(f"erl-derain {verb}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, DatasetError, TrainingError, OSError, ValueError) as e:
        logging.debug("error", exc_info=True)
        print(f"erl-derain {verb}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # pylint: disable=broad-except
        if type(e).__name__ != "InvalidArgumentError":
            raise
        logging.debug("error", exc_info=True)
        if not _from_data_pipeline(e):
            print(f"erl-derain {verb}: error: TensorFlow rejected an operation: {_tf_message(e)} "
                  "(--verbosity=1 shows where)", file=sys.stderr)
            return EXIT_FAILED
        # A file that passed the header scan but fails to decode while tf.data reads it (e.g. a
        # truncated JPEG): name it instead of showing TF's stack trace.
        print(f"erl-derain {verb}: error: reading the data failed: {_tf_message(e)}", file=sys.stderr)
        split = FLAGS.split or ("train" if verb == "train" else "test")
        # the data the verb was reading (evaluate: the one test set of a comma-separated --dataset), else
        # --dataset (the methods' own streams are not paired folders)
        sources = list(_PROGRESS.get("data") or [(FLAGS.dataset, split)])
        named = False
        for value, value_split in dict.fromkeys(sources):
            if value and value.startswith("folder:"):
                from erl_derain.data.pipelines import diagnose_folder

                for file, problem in diagnose_folder(value, value_split):
                    print(f"  {file}: {problem}", file=sys.stderr)
                    named = True
        kept = _PROGRESS.get("kept")
        if named or kept:
            print("  " + ("fix or remove these files" if named else "") + ("; " if named and kept else "")
                  + (kept or ""), file=sys.stderr)
        return EXIT_FAILED


def _stream_source_flags() -> list[str]:
    """The flags naming the sources of the methods' own input streams (checked like --dataset)."""
    from erl_derain.methods import discover

    return [spec.flag_prefix + s.source_setting for spec in discover().values() for s in spec.streams
            if s.source_setting]


HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def run():
    argv = sys.argv
    if any(a in HELP_FLAGS for a in argv[1:]):
        verb = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
        method = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--method=")), None)
        if verb is not None and verb not in verbs():
            print(help_text(), file=sys.stderr, end="")
            print(f"erl-derain: unknown verb {verb!r}", file=sys.stderr)
            sys.exit(2)
        try:
            print(help_text(verb, method), end="")
        except ValueError as e:  # an unknown --method
            print(f"erl-derain {verb}: error: {e}", file=sys.stderr)
            sys.exit(2)
        sys.exit(0)
    try:
        app.run(main, flags_parser=_parse_flags)
    except KeyboardInterrupt:  # before a verb started (e.g. while TensorFlow loads)
        print("erl-derain: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def _parse_flags(argv):
    """absl's parsing, with its errors as usage errors (exit status 2) in one line naming the flag."""
    verb = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else ""
    try:
        return FLAGS(argv)
    except flags.UnrecognizedFlagError as e:
        message = f"--{e.flagname}: {e}"
    except flags.CantOpenFlagFileError as e:
        message = f"--flagfile: {str(e).removeprefix('ERROR:: ')}"
    except flags.Error as e:
        message = str(e)
    except UnicodeDecodeError as e:  # absl reads flagfiles as UTF-8 text
        given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith(("--flagfile=", "-flagfile="))]
        message = (f"--flagfile={','.join(given)}: not a UTF-8 text file of flags (or one it includes is not: "
                   f"{e.reason} at byte {e.start})")
    print(f"erl-derain{' ' + verb if verb else ''}: error: {' '.join(message.split())} (erl-derain "
          f"{verb or '<verb>'} --help lists the flags)", file=sys.stderr)
    sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    run()
