"""``erl-derain``: the command line (an absl app). Thin: it parses flags and calls the library.

Verbs::

    erl-derain train      --flagfile=flags/quickstart.flags [--model_dir=...]
    erl-derain evaluate   --model_dir=... [--dataset=... --split=test]
    erl-derain evaluate   --model_dir=run_a,run_b --dataset=rain100h,ddn --output=table/  (cross-dataset)
    erl-derain compare    --baseline=<model_dir> --candidate=<model_dir> [--dataset=... --output=...]
    erl-derain derain     [--model_dir=...] [--output_dir=derained] photo.jpg folder/   (bundled model by default)
    erl-derain export     --model_dir=... --export_base=.../<model_name> [--version=N]
    erl-derain prepare    --dataset=rain100h --manual_dir=/path/to/the/unpacked/archive [--data_dir=...]
    erl-derain synthesize --clean_dir=... --output_dir=...
    erl-derain generate   --model_dir=<jrgr run> --output_dir=... (--input_dir=synthetic_rainy/ | --clean_dir=clean/)
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ INFO/WARNING lines drown the progress bar

VERBS = ("train", "evaluate", "compare", "derain", "export", "prepare", "synthesize", "generate")

FLAGS = flags.FLAGS

# -- what and where -------------------------------------------------------------------------------
flags.DEFINE_string("method", "erlnet", "Method to train: erlnet | memd | menet | iadn | jrgr (see erl_derain.methods).")
flags.DEFINE_string("model_dir", None, "Run folder: checkpoints, config, TensorBoard logs.")
flags.DEFINE_string("dataset", "synthetic_rain", "TFDS name (e.g. synthetic_rain) or folder:/path with rainy/ and clean/.")
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's, ~/tensorflow_datasets).")
flags.DEFINE_string("manual_dir", None, "Folder holding a benchmark's files (rain100h, ddn, did, agan, ...), read "
                    "when its TFDS dataset is prepared (default: <data_dir>/downloads/manual).")
flags.DEFINE_string("split", None, "Split: 'train' for training, 'test' for evaluation by default.")
flags.DEFINE_integer("seed", 0, "Seed for initialisation, shuffling and crops.")
# -- training schedule ----------------------------------------------------------------------------
flags.DEFINE_integer("batch_size", 1, "Batch size (ERL-Net paper: 1).")
flags.DEFINE_integer("crop_size", 320, "Random training crop, pixels (ERL-Net paper: 320).")
flags.DEFINE_boolean("flip", False, "Random horizontal flips (ERL-Net trains 'without any data augmentation').")
flags.DEFINE_boolean("channel_shuffle", False, "Permute the RGB channels of each training pair alike (one of 6 at "
                     "random): colour variety for achromatic synthetic rain (the bundled model's data has few "
                     "greens). Not in the papers; off by default.")
flags.DEFINE_list("stage_steps", None, "Training steps of each stage of the strategy, e.g. 2000,1000,1000 for MA_D.")
flags.DEFINE_string("init_from", None, "train: start a new run from the network weights of another run (its "
                    "--model_dir; same method and sizes); the optimisers start afresh. With --stage_steps=0,0,N only "
                    "the last stage trains: a fine-tune. Ignored when --model_dir already has a checkpoint.")
flags.DEFINE_list("stage_epochs", None, "Alternative to --stage_steps: epochs of the training split per stage.")
flags.DEFINE_float("lr", None, "Initial learning rate of every stage (default: the method's; ERL-Net 4e-4, MENET 1e-3).")
flags.DEFINE_list("lr_decay_epochs", None, "Multiply the learning rate by --lr_decay_factor after these epochs of "
                  "each stage (MENET: 40,80); replaces the plateau rule.")
flags.DEFINE_list("lr_decay_steps", None, "Same as --lr_decay_epochs in steps.")
flags.DEFINE_float("lr_decay_factor", 0.1, "Factor of --lr_decay_epochs / --lr_decay_steps.")
flags.DEFINE_list("lr_linear_decay_epochs", None, "N,D: the learning rate of each stage's epoch e (1-based) is "
                  "lr * (1 - max(0, e + 1 - N) / (D + 1)): N - 1 epochs at lr, then a linear decay reaching 0 at "
                  "epoch N + D (the pix2pix/CycleGAN 'linear' policy as the JRGR code's train.py applies it, at the "
                  "start of every epoch; its defaults: 100,100). Replaces the plateau rule; not with "
                  "--lr_decay_epochs / --lr_decay_steps.")
flags.DEFINE_enum("crop_mode", "random", ["random", "ten_crop", "scale_rotate"], "Training crops: a random window "
                  "per example; MENET's ten crops of every image (corners + centre of it and of its mirror; 10 "
                  "examples per image); or the intensity-aware paper's random scale (0.5-1) + crop + flip + rotation.")
flags.DEFINE_integer("lr_plateau_window", 500, "Steps averaged into one loss value for the plateau rule (0: off).")
flags.DEFINE_integer("lr_plateau_patience", 5, "Windows without improvement before lr is divided.")
flags.DEFINE_float("lr_plateau_factor", 0.1, "Learning-rate factor on a plateau (paper: divided by 10).")
flags.DEFINE_float("min_lr", 1e-7, "Lower bound of the plateau rule.")
flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints (one is also written at each stage end).")
flags.DEFINE_integer("log_every", 50, "Steps between TensorBoard summaries.")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept on disk.")
flags.DEFINE_integer("stop_after", 0, "Stop after this many steps with a checkpoint (a job slot shorter than the "
                     "run; the same command resumes); 0: train to the end.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA for the training and inference steps (also under "
                  "--strategy): auto = on GPU only.")
flags.DEFINE_integer("shuffle_buffer", 256, "Shuffle buffer for TFDS records.")
flags.DEFINE_integer("cache_mb", None, "Training splits up to this serialized size (MiB) are cached in memory and fully "
                     "permuted each epoch; larger ones stream through --shuffle_buffer (default 256; 0: never cache).")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"], "tf.distribute strategy: "
                  "default (one device), mirrored (all local GPUs), multi_worker (MultiWorkerMirroredStrategy from "
                  "TF_CONFIG), tpu (--tpu). --batch_size is per replica: the global batch is batch_size x replicas.")
flags.DEFINE_string("tpu", None, "--strategy=tpu: the TPU's name or grpc:// address ('local' on a TPU VM).")
flags.DEFINE_integer("logical_cpus", 0, "Split the CPU into this many logical devices (to try --strategy=mirrored "
                     "without GPUs; 0: leave the devices alone).")
flags.DEFINE_boolean("mixed_precision", False, "Mixed precision: mixed_float16 on GPU (dynamic loss scaling), "
                     "mixed_bfloat16 on CPU/TPU; variables and network outputs stay float32.")
flags.DEFINE_enum("on_nan", "stop", ["stop", "skip_batch"], "A non-finite loss: stop (naming step, files and loss "
                  "terms; the last good checkpoint is kept) or undo that step and skip its batch (10 in a row stop).")
flags.DEFINE_boolean("evaluate_after", True, "After training, evaluate on --eval_split and print PSNR/SSIM.")
flags.DEFINE_string("eval_split", "test", "Split evaluated after training.")
# -- ERL-Net ----------------------------------------------------------------------------------------
flags.DEFINE_list("widths", ["64", "128", "256"], "ERL-Net level widths (one per down step).")
flags.DEFINE_integer("bottleneck_width", 256, "ERL-Net bottleneck width.")
flags.DEFINE_integer("dense_layers", 4, "Conv layers per dense block.")
flags.DEFINE_integer("growth", 32, "Dense block growth rate.")
flags.DEFINE_enum("base", "memd", ["memd", "memd-", "memd--"], "Base network: MEMD, MEMD- (no FUS), MEMD-- (no skips).")
flags.DEFINE_enum("entanglement", "mlgd", ["mlgd", "clgd", "none"], "CLGD: bottleneck only; MLGD: every level.")
flags.DEFINE_enum("erl_strategy", "ma_d", ["ma_a", "ma_b", "ma_c", "ma_d", "dt", "memd"], "Training strategy (Table 1).")
flags.DEFINE_integer("se_ratio", 16, "Squeeze-excitation reduction ratio inside FUS.")
flags.DEFINE_float("lambda_fre", 0.01, "Weight of L_fre in L_ERL (Eq. 5).")
flags.DEFINE_enum("erl_entangle_at", "post_activation", ["post_activation", "pre_activation"], "ERL-Net: add REN's "
                  "taps to MEN's after each dense block's activation (Fig. 2's taps) or before it, the activation "
                  "then applied to the sum (so R(x) can subtract; the rebuttal's Fig. R1 shows pre-ReLU "
                  "activations); L_fre compares in the same space. docs/fidelity.md gives the measured comparison.")
# -- MENET ------------------------------------------------------------------------------------------
flags.DEFINE_integer("menet_blocks", 8, "MENET residual blocks: 8 (MENET), 16 (MENET-deep).")
flags.DEFINE_boolean("menet_ca", True, "MENET channel-attention (CA) block.")
flags.DEFINE_list("tasks", ["p", "e", "t"], "MENET tasks: p = MSE (L_p), e = edge-aware Sobel (L_e), t = texture (L_t).")
flags.DEFINE_enum("task_weighting", "gb", ["fixed", "gb", "lb"], "Task weighting: fixed (--task_weights), GB "
                  "(gradient balance, Algorithm 1) or LB (loss balance, Algorithm 2).")
flags.DEFINE_list("task_weights", None, "Fixed weights, one per --tasks entry (default 1 each; the paper's "
                  "L_p + L_e fixed: 1,0.01).")
flags.DEFINE_enum("texture_reduction", "frobenius", ["frobenius", "mean"], "L_t: the paper's squared Frobenius "
                  "norm of the Gram difference (Eq. 7) or the authors' code's squared difference of the Gram means.")
flags.DEFINE_float("menet_value_range", 1.0, "MENET: the network and its task losses see images scaled to [0, this] "
                   "(255: the authors' code, whose tables the flags/menet files reproduce; 1: [0, 1]); inputs and "
                   "outputs of the library stay in [0, 1].")
flags.DEFINE_enum("gb_arithmetic", "authors", ["authors", "stable"], "GB / LB weights: the authors' 1 - v_t / S in "
                  "float32 (a dominant task's weight rounds to 0, as in their runs) or the other tasks' sum over S "
                  "(the same in exact arithmetic, without the cancellation).")
# -- intensity-aware network (iadn) ----------------------------------------------------------------
flags.DEFINE_integer("iadn_width", 32, "iadn: trunk width (the paper gives none).")
flags.DEFINE_integer("iadn_blocks", 3, "iadn: PHP blocks in sub-network 1 (and the segmentation network).")
flags.DEFINE_integer("iadn_refine_blocks", 1, "iadn: PHP blocks in sub-network 2.")
flags.DEFINE_integer("php_groups", 3, "iadn: parallel pyramids stacked per PHP block (hierarchical pyramid).")
flags.DEFINE_enum("php_mode", "php", ["php", "standard", "parallel_only", "hierarchical_only", "php_concat"],
                  "iadn: the PHP block or a Table IV ablation.")
flags.DEFINE_enum("contrast_pooling", "contrast", ["contrast", "max", "none"],
                  "iadn: contrast-aware pooling (Eq. 2), max pooling, or none (Table IV).")
flags.DEFINE_boolean("iadn_refinement", True, "iadn: sub-network 2 (False: Table IV 'w/o X').")
flags.DEFINE_boolean("iadn_filtered_gt", True, "iadn: supervise X^c with the Gaussian-filtered clean image "
                     "(False: Table IV 'X_f^gt -> X^gt').")
flags.DEFINE_integer("gaussian_kernel", 5, "iadn: Gaussian kernel of the low-frequency ground truth (3, 5, 7, 9).")
flags.DEFINE_float("lambda_acc_c", 1.0, "iadn: weight of L_acc(X^c, X_f^gt) (Eq. 5 lambda_1).")
flags.DEFINE_float("lambda_acc", 1.0, "iadn: weight of L_acc(X, X^gt) (lambda_2).")
flags.DEFINE_float("lambda_col", 0.1, "iadn: weight of the colour alignment L_col (lambda_3; 0: Table III without it).")
flags.DEFINE_float("lambda_seg", 0.05, "iadn: weight of the semantic regularisation L_seg (lambda_4; used only "
                   "when the dataset has segmentation labels).")
flags.DEFINE_enum("iadn_seg_net", "deraining", ["deraining", "sub1"], "iadn: structure of the segmentation network "
                  "Phi: the deraining network's, both sub-networks (the paper), or sub-network 1 only (the "
                  "structure of runs made before this flag, whose config.json lacks it and loads as sub1).")
flags.DEFINE_list("exclude_rain_sizes", None, "Training data: leave out the examples with streaks of these sizes, by "
                  "the dataset's rain_radius feature (cityscapes_rain): small (radius 0.2), medium (0.4, 0.6), large "
                  "(0.8, 1.0); intensity-aware paper, Table IV w/o S / M / L. Epochs count the kept examples.")
# -- JRGR -------------------------------------------------------------------------------------------
flags.DEFINE_string("real_dataset", None, "jrgr: unpaired real rainy photos: a TFDS name (real_rain) or a folder.")
flags.DEFINE_string("real_split", "train", "jrgr: split of --real_dataset.")
flags.DEFINE_string("real_manual_dir", None, "jrgr: manual_dir of --real_dataset (a TFDS builder).")
flags.DEFINE_enum("real_small_images", "upscale", ["upscale", "error"], "jrgr: real photos smaller than the crop.")
flags.DEFINE_enum("jrgr_strategy", "proposed", ["proposed", "init2", "init1"], "jrgr: Table 2 strategy: pre-train "
                  "F_s and F_r (proposed), F_s only (init2) or nothing (init1) before the joint stage.")
flags.DEFINE_enum("jrgr_pretrain", "shared", ["shared", "separate"], "jrgr, --jrgr_strategy=proposed: pre-train "
                  "one U-Net (F_s) and copy it into F_r when the joint stage starts (shared: the authors' code and "
                  "README, one unetderain model loaded with --init_derain 1,3) or pre-train F_s and F_r side by "
                  "side from their own initialisations (separate).")
flags.DEFINE_integer("unet_depth", 7, "jrgr: down steps of the removal U-Nets (pad multiple 2**depth).")
flags.DEFINE_integer("unet_filters", 64, "jrgr: base filters of the removal U-Nets.")
flags.DEFINE_integer("resnet_blocks", 9, "jrgr: residual blocks of the generation nets.")
flags.DEFINE_integer("gen_filters", 64, "jrgr: base filters of the generation nets.")
flags.DEFINE_enum("gen_norm", "batch", ["batch", "instance"], "jrgr: normalisation of the generation nets.")
flags.DEFINE_integer("disc_filters", 64, "jrgr: base filters of the PatchGAN discriminators.")
flags.DEFINE_integer("disc_layers", 3, "jrgr: PatchGAN layers.")
flags.DEFINE_float("jrgr_alpha", 4.0, "jrgr: alpha on the real background term of L_adv^B.")
flags.DEFINE_float("lambda_adv", 10.0, "jrgr: weight of the adversarial losses (0: no discriminator update).")
flags.DEFINE_float("lambda_adv_b", None, "jrgr: weight of L_adv^B alone (default --lambda_adv; 0: Table 2 w/o L_adv^B).")
flags.DEFINE_float("lambda_adv_o", None, "jrgr: weight of L_adv^O alone (default --lambda_adv; 0: w/o L_adv^O).")
flags.DEFINE_float("lambda_cyc", 1.0, "jrgr: weight of the cycle losses (0: w/o L_cyc).")
flags.DEFINE_float("lambda_mse", 10.0, "jrgr: weight of the synthetic MSE (0: w/o L_mse).")
flags.DEFINE_float("pretrain_lr", None, "jrgr: learning rate of the pre-training stage (default --lr).")
flags.DEFINE_float("fr_lr_factor", None, "jrgr: F_r's joint-stage learning rate over the generation nets' "
                   "(default: 0.1 when F_r was pre-trained (proposed), else 1: the code's rule).")
flags.DEFINE_float("fs_lr_factor", None, "jrgr: F_s's joint-stage learning rate over the generation nets' "
                   "(default: 0.01 when F_s was pre-trained (proposed, init2), else 1: the code's rule).")
flags.DEFINE_float("beta_1", 0.5, "jrgr: Adam beta_1.")
flags.DEFINE_integer("pool_size", 50, "jrgr: image pool of the discriminators' fake inputs.")
flags.DEFINE_string("input_dir", None, "generate: folder of synthetic rainy images (or, with --clean_dir, of "
                    "nothing: rain is synthesised on the clean photos).")
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
flags.DEFINE_integer("figures", 4, "compare: images shown in the before/after grid and RIM overlays (0: none).")
flags.DEFINE_integer("max_images", None, "evaluate: only the first N images.")
flags.DEFINE_list("network", ["derain"], "evaluate: the network(s) scored, side by side: derain (default) or one the "
                  "method offers besides, fed the input it translates (ERL-Net: clean_autoencoder, the clean-to-clean "
                  "network of stage I, fed the clean images: the paper's introduction experiment).")
flags.DEFINE_integer("tile", 512, "Images larger than this (pixels per side) are processed in overlapping tiles "
                     "(0: always whole images). derain: 512; evaluate/compare use whole images up to 1024 unless "
                     "--tile is given, so the standard benchmarks are evaluated whole, as in the papers.")
flags.DEFINE_integer("tile_overlap", 32, "Minimum overlap between neighbouring tiles, pixels (blended linearly).")
flags.DEFINE_integer("self_ensemble", 1, "derain / evaluate / compare: average the network's output over this many "
                     "mirrored views of each image (1: off; 2: + left-right; 4: + upside-down and both), each mirrored "
                     "back; N times the inference time. The bundled model gains about 0.2-0.3 dB with 4 (its card).")
flags.DEFINE_enum("output_format", "png", ["png", "same", "jpg", "webp", "tif"],
                  "derain: output file type; png keeps alpha and 16-bit, 'same' keeps each input's extension "
                  "(an input whose alpha or bit depth the format cannot hold is refused, not degraded).")
flags.DEFINE_string("output_dir", None, "derain / synthesize / generate: output folder (derain: 'derained').")
flags.DEFINE_boolean("overwrite", False, "derain: overwrite existing outputs; export: replace an existing --version.")
flags.DEFINE_string("export_base", None, "export: <base>/<version>/ is written (TF Serving layout).")
flags.DEFINE_boolean("pretrained", False, "export: the bundled pretrained model instead of --model_dir.")
flags.DEFINE_integer("version", None, "export: version number (default: next integer); derain --server: the "
                     "served version to query (default: the server's latest).")
flags.DEFINE_string("server", None, "derain: host:port of a TF Serving server (REST 8501 / gRPC 8500) to de-rain on "
                    "instead of --model_dir.")
flags.DEFINE_string("model_name", None, "derain --server: the served model's name (its export_base folder name).")
flags.DEFINE_enum("protocol", "rest", ["rest", "grpc"], "derain --server: REST (standard library) or gRPC "
                  "(pip install 'erl_derain[serving]').")
# -- synthesis --------------------------------------------------------------------------------------
flags.DEFINE_string("clean_dir", None, "synthesize: folder of clean images; train/evaluate with "
                    "--dataset=synthetic_rain: synthesise the dataset on these photos instead of scikit-image's.")
flags.DEFINE_integer("renders_per_image", 1, "synthesize: rainy renderings per clean image.")
flags.DEFINE_float("rain_density", None, "synthesize: fraction of streak seeds (default: the library's).")
flags.DEFINE_float("rain_length", None, "synthesize: streak length in pixels.")
flags.DEFINE_float("rain_intensity", None, "synthesize: streak brightness.")
flags.DEFINE_integer("rain_layers", 1, "synthesize: streak layers.")
flags.DEFINE_boolean("rain_accumulation", False, "synthesize: add the JORDER veil (rain accumulation) model.")

# Flags that describe a training run (saved to <model_dir>/config.json).
RUN_KEYS = ("method", "dataset", "clean_dir", "data_dir", "manual_dir", "seed", "batch_size", "crop_size", "flip", "channel_shuffle", "init_from", "stage_steps", "stage_epochs",
            "lr", "lr_decay_epochs", "lr_decay_steps", "lr_decay_factor", "lr_linear_decay_epochs", "crop_mode", "menet_blocks", "menet_ca",
            "tasks", "task_weighting", "task_weights", "texture_reduction", "menet_value_range", "gb_arithmetic",
            "iadn_width", "iadn_blocks",
            "iadn_refine_blocks", "php_groups", "php_mode", "contrast_pooling", "iadn_refinement", "iadn_filtered_gt",
            "gaussian_kernel", "lambda_acc_c", "lambda_acc", "lambda_col", "lambda_seg", "iadn_seg_net",
            "exclude_rain_sizes", "real_dataset", "real_split",
            "real_manual_dir", "real_small_images", "jrgr_strategy", "jrgr_pretrain", "unet_depth", "unet_filters", "resnet_blocks",
            "gen_filters", "gen_norm", "disc_filters", "disc_layers", "jrgr_alpha", "lambda_adv", "lambda_adv_b",
            "lambda_adv_o", "lambda_cyc", "lambda_mse", "pretrain_lr", "fr_lr_factor", "fs_lr_factor", "beta_1",
            "pool_size", "lr_plateau_window", "lr_plateau_patience", "lr_plateau_factor", "min_lr", "widths",
            "bottleneck_width", "dense_layers", "growth", "se_ratio", "base", "entanglement", "erl_strategy", "lambda_fre",
            "erl_entangle_at",
            "jit_compile", "mixed_precision", "strategy")


class UsageError(ValueError):
    pass


def _require(name: str):
    value = getattr(FLAGS, name)
    if value in (None, ""):
        raise UsageError(f"--{name} is required for `erl-derain {FLAGS_VERB}`")
    return value


FLAGS_VERB = ""


def _run_config() -> dict:
    from erl_derain.methods import get_method

    config = {k: getattr(FLAGS, k) for k in RUN_KEYS}
    config["widths"] = [int(w) for w in FLAGS.widths]
    if config["lr"] is None:
        config["lr"] = get_method(FLAGS.method).default_lr
    return config


def _dataset_source(name: str, clean_dir: str | None):
    """The --dataset value for the pipelines: a name, or for synthetic_rain on --clean_dir photos a
    TFDS builder with a config of its own (prepared into its own folder of the data_dir)."""
    if clean_dir and name.split("/")[0] == "synthetic_rain":
        from tfds_builders.synthetic_rain.synthetic_rain_dataset_builder import Builder, custom_config

        if not os.path.isdir(clean_dir):
            raise UsageError(f"--clean_dir={clean_dir}: no such folder")
        return Builder(config=custom_config(clean_dir), data_dir=FLAGS.data_dir)
    return name


def _train_exclude() -> dict | None:
    """--exclude_rain_sizes as the training stream's ``exclude`` (None when unset); a bad size or a
    dataset without the rain_radius feature raise ValueError naming the flag."""
    if not FLAGS.exclude_rain_sizes:
        return None
    from erl_derain.data import pipelines
    from tfds_builders.cityscapes_rain.cityscapes_rain_dataset_builder import exclude_rain_sizes

    source = _dataset_source(FLAGS.dataset, FLAGS.clean_dir)
    folder = isinstance(source, str) and source.startswith(pipelines.FOLDER_PREFIX)
    features = [] if folder else list(pipelines.load_builder(source, FLAGS.data_dir).info.features.keys())
    return exclude_rain_sizes(FLAGS.exclude_rain_sizes, features, dataset=FLAGS.dataset)


def _steps_per_epoch(global_batch: int) -> float:
    from erl_derain.data import pipelines

    n = pipelines.num_examples(_dataset_source(FLAGS.dataset, FLAGS.clean_dir), FLAGS.split or "train",
                               data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir, exclude=_train_exclude())
    if FLAGS.crop_mode == "ten_crop":
        n *= pipelines.TEN_CROPS
    return n / global_batch


def _lr_schedule(config, global_batch: int):
    from erl_derain import training

    if FLAGS.lr_decay_epochs and FLAGS.lr_decay_steps:
        raise UsageError("give --lr_decay_epochs or --lr_decay_steps, not both")
    if FLAGS.lr_linear_decay_epochs:
        if FLAGS.lr_decay_epochs or FLAGS.lr_decay_steps:
            raise UsageError("give --lr_linear_decay_epochs or --lr_decay_epochs / --lr_decay_steps, not both")
        try:
            constant, decay = (int(v) for v in FLAGS.lr_linear_decay_epochs)
            if constant < 0 or decay < 0:
                raise ValueError
        except ValueError:
            raise UsageError("--lr_linear_decay_epochs must be two whole numbers >= 0, N,D (epochs at the initial "
                             f"rate, epochs of linear decay), got {','.join(FLAGS.lr_linear_decay_epochs)}") from None
        return training.LinearDecaySchedule(config["lr"], constant, decay, _steps_per_epoch(global_batch))
    if FLAGS.lr_decay_steps:
        boundaries = [int(s) for s in FLAGS.lr_decay_steps]
    elif FLAGS.lr_decay_epochs:
        per_epoch = _steps_per_epoch(global_batch)
        boundaries = [max(1, int(round(float(e) * per_epoch))) for e in FLAGS.lr_decay_epochs]
    else:
        return None
    return training.StepSchedule(config["lr"], boundaries, FLAGS.lr_decay_factor)


def _stage_steps(trainer, global_batch: int) -> list[int]:
    if FLAGS.stage_steps:
        return [int(s) for s in FLAGS.stage_steps]
    if FLAGS.stage_epochs:
        per_epoch = _steps_per_epoch(global_batch)
        return [max(1, int(round(float(e) * per_epoch))) for e in FLAGS.stage_epochs]
    raise UsageError("give --stage_steps (or --stage_epochs), one value per stage of "
                     f"--erl_strategy={FLAGS.erl_strategy}: " + ", ".join(s.name for s in trainer.stages))


def _make_strategy():
    """The --strategy (and --logical_cpus, --mixed_precision), set up before TensorFlow runs any op."""
    from erl_derain import distribute

    try:
        distribute.split_cpu(FLAGS.logical_cpus)
        strategy = distribute.make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    except distribute.DistributeError as e:
        raise UsageError(str(e)) from e
    distribute.set_precision(FLAGS.mixed_precision)
    return strategy


def cmd_train():
    import tensorflow as tf

    from erl_derain import distribute, training
    from erl_derain.data import pipelines
    from erl_derain.methods import make_trainer

    model_dir = _require("model_dir")
    strategy = _make_strategy()
    config = _run_config()
    keras_seed(FLAGS.seed)
    with strategy.scope():
        trainer = make_trainer(config)
    global_batch = FLAGS.batch_size * strategy.num_replicas_in_sync
    stage_steps = _stage_steps(trainer, global_batch)
    split = FLAGS.split or "train"
    multiple = trainer.pad_multiple
    if FLAGS.crop_size % multiple:
        raise UsageError(f"--crop_size={FLAGS.crop_size} must be a multiple of {multiple} (the network "
                         f"down-samples {multiple}x)")
    dataset = _dataset_source(FLAGS.dataset, FLAGS.clean_dir)
    # Fail on a bad dataset before any training work starts.
    cache = None if FLAGS.cache_mb is None else FLAGS.cache_mb * 2**20
    stream = dict(batch_size=global_batch, crop_size=FLAGS.crop_size, training=True, seed=FLAGS.seed,
                  data_dir=FLAGS.data_dir, flip=FLAGS.flip, shuffle_buffer=FLAGS.shuffle_buffer,
                  manual_dir=FLAGS.manual_dir, crop_mode=FLAGS.crop_mode, cache_limit_bytes=cache,
                  exclude=_train_exclude())
    pipelines.paired_dataset(dataset, split, **stream)  # a bad dataset fails before any training work starts

    def paired_fn(start_index: int) -> tf.data.Dataset:
        ds = pipelines.paired_dataset(dataset, split, start_index=start_index, **stream)
        if FLAGS.channel_shuffle:
            ds = pipelines.shuffle_channels(ds, seed=FLAGS.seed, start_index=start_index, batch_size=global_batch)
        return ds

    dataset_fn = paired_fn
    if FLAGS.method == "jrgr":  # synthetic pairs zipped with unpaired real rainy crops
        from erl_derain.data import unpaired

        if not FLAGS.real_dataset:
            raise UsageError("--method=jrgr needs --real_dataset (real_rain, or a folder of real rainy photos)")

        def real_fn(start_index: int) -> tf.data.Dataset:
            return unpaired.unpaired_dataset(FLAGS.real_dataset, FLAGS.real_split, batch_size=global_batch,
                                             crop_size=FLAGS.crop_size, seed=FLAGS.seed, start_index=start_index,
                                             flip=FLAGS.flip, data_dir=FLAGS.data_dir,
                                             manual_dir=FLAGS.real_manual_dir, small_images=FLAGS.real_small_images,
                                             cache_limit_bytes=cache)

        real_fn(0)  # a bad real-rain source fails before training starts

        def dataset_fn(start_index: int) -> tf.data.Dataset:
            return unpaired.zipped(paired_fn(start_index), real_fn(start_index))

    plateau = training.PlateauSchedule(FLAGS.lr_plateau_window, FLAGS.lr_plateau_patience,
                                       FLAGS.lr_plateau_factor, FLAGS.min_lr)
    summary = training.train(trainer, config, dataset_fn, model_dir=model_dir, stage_steps=stage_steps,
                             batch_size=global_batch, jit_compile=FLAGS.jit_compile,
                             checkpoint_every=FLAGS.checkpoint_every, log_every=FLAGS.log_every,
                             keep_checkpoints=FLAGS.keep_checkpoints, plateau=plateau,
                             lr_schedule=_lr_schedule(config, global_batch), on_nan=FLAGS.on_nan, strategy=strategy,
                             stop_after=FLAGS.stop_after, init_from=FLAGS.init_from)
    if summary.get("skipped_batches"):
        print(f"Skipped {len(summary['skipped_batches'])} batch(es) with a non-finite loss: "
              f"{summary['skipped_batches'][:10]}", flush=True)
    if summary.get("stopped_early"):
        print(f"Stopped after {FLAGS.stop_after} steps (--stop_after) at global step {summary['global_step']}; "
              f"the same command resumes from {os.path.join(model_dir, 'checkpoints')}", flush=True)
        return
    if not distribute.is_chief(strategy):
        print(f"Training done in {summary['seconds']:.1f} s ({summary['global_step']} steps) on this worker; "
              "the chief (worker 0) writes the checkpoints", flush=True)
        return
    print(f"Training done in {summary['seconds']:.1f} s ({summary['global_step']} steps); "
          f"checkpoints in {os.path.join(model_dir, 'checkpoints')}", flush=True)
    if FLAGS.evaluate_after:
        _evaluate(trainer.inference_model(), trainer.pad_multiple, model_dir, FLAGS.dataset, FLAGS.eval_split,
                  FLAGS.clean_dir)


def keras_seed(seed: int):
    import keras

    keras.utils.set_random_seed(seed)


def _predict_fn(model):
    """The inference step (averaged over --self_ensemble mirrored views); XLA-compiled with --jit_compile
    (auto: on GPU; one compilation per image size)."""
    import tensorflow as tf

    from erl_derain.inference import flip_ensemble
    from erl_derain.training import resolve_jit_compile

    return tf.function(flip_ensemble(model, FLAGS.self_ensemble),
                       input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
                       jit_compile=resolve_jit_compile(FLAGS.jit_compile))


def _eval_dataset(dataset, split, clean_dir=None, manual_dir=None):
    from erl_derain.data import pipelines

    return pipelines.paired_dataset(_dataset_source(dataset, clean_dir), split, batch_size=1, crop_size=None,
                                    training=False, data_dir=FLAGS.data_dir, manual_dir=manual_dir or FLAGS.manual_dir)


# evaluate / compare without --tile: whole images up to this side (every standard benchmark's test
# images: Rain100H/L 481x321, DDN 512x384, DID 512x512, AGAN up to 720x480), tiles of it above.
EVAL_TILE = 1024


def _eval_tile() -> int:
    """Papers evaluate whole images: evaluate tiles only images larger than EVAL_TILE (or --tile)."""
    return FLAGS.tile if FLAGS["tile"].present else EVAL_TILE


def _eval_settings(dataset: str, split: str) -> dict:
    """What an evaluate / compare result depends on besides the model(s), recorded with it."""
    settings = {"dataset": dataset, "split": split, "y_rounding": FLAGS.y_rounding, "crop_border": FLAGS.crop_border,
                "self_ensemble": FLAGS.self_ensemble, "eval_protocol": FLAGS.eval_protocol}
    if FLAGS.eval_protocol == "ten_crop_rgb":  # (Y rounding and crop_border do not apply to it)
        settings["eval_crop_size"] = FLAGS.eval_crop_size
    return settings


def _safe_name(dataset: str) -> str:
    return dataset.replace("folder:", "folder_").replace("/", "_").strip("_")


def _evaluate(model, multiple, model_dir, dataset, split, clean_dir=None, output=None, network="derain",
              input_key="rainy"):
    from erl_derain import evaluation

    ds = _eval_dataset(dataset, split, clean_dir)
    what = "" if network == "derain" else f" network {network} (fed the {input_key} images)"
    ten_crop = FLAGS.eval_protocol == "ten_crop_rgb"
    if ten_crop:
        print(f"Evaluating {model_dir or 'the model'}{what} on {dataset} [{split}] (the ten {FLAGS.eval_crop_size}x"
              f"{FLAGS.eval_crop_size} crops of each image, RGB, unrounded: --eval_protocol=ten_crop_rgb):", flush=True)
        rows = evaluation.evaluate_ten_crop(_predict_fn(model), multiple, ds, crop_size=FLAGS.eval_crop_size,
                                            max_images=FLAGS.max_images, input_key=input_key)
    else:
        print(f"Evaluating {model_dir or 'the model'}{what} on {dataset} [{split}] (full-size images, Y channel "
              f"{FLAGS.y_rounding}):", flush=True)
        rows = evaluation.evaluate(_predict_fn(model), multiple, ds, rounded=FLAGS.y_rounding == "rounded",
                                   crop_border=FLAGS.crop_border, tile=_eval_tile(), tile_overlap=FLAGS.tile_overlap,
                                   max_images=FLAGS.max_images, input_key=input_key)
    summary = evaluation.summarize(rows)
    suffix = "" if network == "derain" else f"_{network}"
    out_dir = output or os.path.join(model_dir, f"eval_{_safe_name(dataset)}_{split}{suffix}")
    settings = {**_eval_settings(dataset, split), "network": network, "network_input": input_key}
    csv_path, json_path = evaluation.write_results(rows, summary, out_dir, extra={**settings, "model_dir": model_dir})
    if model_dir and os.path.isdir(model_dir) and network == "derain":  # the latest evaluation, with its settings
        evaluation.write_json(os.path.join(model_dir, "metrics.json"), {**settings, **summary})
    if ten_crop:
        print(f"Mean over {summary['num_crops']} crops of {summary['num_images']} images: RGB-PSNR "
              f"{summary['input_psnr_rgb']:.2f} (rainy) -> {summary['psnr_rgb']:.2f} dB ({summary['gain_psnr_rgb']:+.2f}), "
              f"RGB-SSIM {summary['input_ssim_rgb']:.4f} -> {summary['ssim_rgb']:.4f}")
    else:
        print(f"Mean over {summary['num_images']} images: Y-PSNR {summary['input_psnr_y']:.2f} (rainy) -> "
              f"{summary['psnr_y']:.2f} dB ({summary['gain_psnr_y']:+.2f}), Y-SSIM {summary['input_ssim_y']:.4f} -> "
              f"{summary['ssim_y']:.4f}; RGB PSNR {summary['input_psnr_rgb']:.2f} -> {summary['psnr_rgb']:.2f} dB")
    print(f"Per-image results: {csv_path}; summary: {json_path}", flush=True)
    return summary


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def cmd_evaluate():
    from erl_derain import evaluation
    from erl_derain.training import load_trainer

    model_dirs = _split_list(_require("model_dir"))
    datasets = _split_list(FLAGS.dataset) if FLAGS["dataset"].present else []
    split = FLAGS.split or "test"
    networks = list(dict.fromkeys(FLAGS.network or ["derain"]))
    if networks != ["derain"] and (len(model_dirs) > 1 or len(datasets) > 1):
        raise UsageError("--network scores other networks of one --model_dir on one --dataset")
    if len(model_dirs) == 1 and len(datasets) <= 1:
        trainer, config = load_trainer(model_dirs[0])
        if datasets:
            dataset, clean_dir = datasets[0], FLAGS.clean_dir
        else:
            dataset, clean_dir = config.get("dataset", FLAGS.dataset), FLAGS.clean_dir or config.get("clean_dir")
        offered = (trainer.evaluation_networks() if hasattr(trainer, "evaluation_networks")
                   else {"derain": (trainer.inference_model(), "rainy")})
        unknown = [n for n in networks if n not in offered]
        if unknown:
            raise UsageError(f"--network={','.join(unknown)}: {model_dirs[0]} ({config.get('method')}) offers "
                             f"{', '.join(offered)}")
        results = {}
        for name in networks:
            model, input_key = offered[name]
            output = FLAGS.output if len(networks) == 1 or not FLAGS.output else os.path.join(FLAGS.output, name)
            results[name] = _evaluate(model, trainer.pad_multiple, model_dirs[0], dataset, split, clean_dir,
                                      output=output, network=name, input_key=input_key)
        if len(networks) > 1:
            channel = "Y" if all("psnr_y" in s for s in results.values()) else "RGB"
            key = channel.lower()
            print(f"network             input   {channel}-PSNR   {channel}-SSIM")
            for name, s in results.items():
                print(f"{name:<19} {offered[name][1]:<7} {s['psnr_' + key]:7.2f}   {s['ssim_' + key]:.4f}")
        return 0
    # Cross-dataset evaluation: every model on every dataset (default: each model's own training set).
    runs = [(m, *load_trainer(m)) for m in model_dirs]
    if not datasets:
        datasets = list(dict.fromkeys(config.get("dataset", FLAGS.dataset) for _, _, config in runs))
    trained_on = [config.get("dataset", "?") for _, _, config in runs]
    labels = [t if trained_on.count(t) == 1 else f"{t} ({os.path.basename(os.path.normpath(m))})"
              for t, (m, _, _) in zip(trained_on, runs)]
    results = {}
    for label, (model_dir, trainer, _) in zip(labels, runs):
        model = trainer.inference_model()
        for dataset in datasets:
            results[(label, dataset)] = _evaluate(model, trainer.pad_multiple, model_dir, dataset, split)
    output = FLAGS.output or "cross_dataset_eval"
    md_path, csv_path = evaluation.cross_dataset_table(results, output)
    with open(md_path, encoding="utf-8") as f:
        print(f.read())
    print(f"Cross-dataset table: {md_path} and {csv_path}")
    return 0


def cmd_compare():
    from erl_derain import evaluation, plots
    from erl_derain.training import load_trainer

    baseline_dir, candidate_dir = _require("baseline"), _require("candidate")
    if FLAGS.eval_protocol != "full_y":
        raise UsageError(f"compare dissects whole images on the Y channel; --eval_protocol={FLAGS.eval_protocol} is "
                         "for evaluate")
    base_trainer, base_config = load_trainer(baseline_dir)
    cand_trainer, cand_config = load_trainer(candidate_dir)
    if FLAGS["dataset"].present:
        dataset, clean_dir = FLAGS.dataset, FLAGS.clean_dir
    else:
        dataset, clean_dir = cand_config.get("dataset", FLAGS.dataset), FLAGS.clean_dir or cand_config.get("clean_dir")
    split = FLAGS.split or "test"
    ds = _eval_dataset(dataset, split, clean_dir)
    print(f"Comparing candidate {candidate_dir} with baseline {baseline_dir} on {dataset} [{split}]:", flush=True)
    rows, kept = evaluation.compare(
        _predict_fn(base_trainer.inference_model()), base_trainer.pad_multiple,
        _predict_fn(cand_trainer.inference_model()), cand_trainer.pad_multiple, ds,
        rounded=FLAGS.y_rounding == "rounded", crop_border=FLAGS.crop_border, tile=_eval_tile(),
        tile_overlap=FLAGS.tile_overlap, max_images=FLAGS.max_images, keep_images=FLAGS.figures)
    summary = evaluation.summarize_comparison(rows)
    out_dir = FLAGS.output or os.path.join(
        candidate_dir, f"compare_{os.path.basename(os.path.normpath(baseline_dir))}_{_safe_name(dataset)}_{split}")
    csv_path, json_path = evaluation.write_results(
        rows, summary, out_dir, extra={**_eval_settings(dataset, split), "baseline": baseline_dir,
                                       "candidate": candidate_dir, "baseline_method": base_config.get("method"),
                                       "candidate_method": cand_config.get("method")})
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

    dataset = _require("dataset")
    source = _dataset_source(dataset, FLAGS.clean_dir)
    if isinstance(source, str):
        if source.startswith(pipelines.FOLDER_PREFIX):
            raise UsageError(f"--dataset={source} is a folder: it is read directly, nothing to prepare")
        builder = pipelines.load_builder(source, FLAGS.data_dir)
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


def _expand_inputs(paths: list[str]) -> list[str]:
    from erl_derain.data.image_io import list_images

    files = []
    for p in paths:
        if os.path.isdir(p):
            files += list_images(p)
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise UsageError(f"{p}: no such file or folder")
    if not files:
        raise UsageError(f"no images found in {paths}")
    return files


def _derain_via_server(args: list[str]):
    from erl_derain import photos
    from erl_derain.serving import ServerUnavailable, derain_files_via_server

    output_dir, model_name = _require("output_dir"), _require("model_name")
    if not args:
        raise UsageError("give the photos or folders to de-rain: erl-derain derain --server=host:8501 "
                         "--model_name=... --output_dir=... photo.jpg folder/")
    files = _expand_inputs(args)
    try:
        written, skipped, failures = derain_files_via_server(
            FLAGS.server, model_name, files, output_dir, protocol=FLAGS.protocol, overwrite=FLAGS.overwrite,
            output_format=FLAGS.output_format, version=FLAGS.version, tile=FLAGS.tile,
            tile_overlap=FLAGS.tile_overlap)
    except (ServerUnavailable, ImportError) as e:
        raise UsageError(str(e)) from e
    return photos.report(written, skipped, failures, output_dir, via=FLAGS.server)


def cmd_derain(args: list[str]):
    from erl_derain import photos
    from erl_derain.inference import as_inference_model
    from erl_derain.training import load_trainer

    if FLAGS.server:
        if FLAGS.self_ensemble != 1:
            raise UsageError("--self_ensemble runs the network several times per image here; with --server the "
                             "model runs in TF Serving, once per image: leave --self_ensemble at 1")
        return _derain_via_server(args)
    output_dir = FLAGS.output_dir or "derained"
    if not args:
        raise UsageError("give the photos or folders to de-rain: erl-derain derain [--model_dir=...] "
                         "[--output_dir=derained] photo.jpg folder/")
    files = _expand_inputs(args)
    if FLAGS.model_dir:
        trainer, _ = load_trainer(FLAGS.model_dir)
    else:  # the bundled model
        from erl_derain.pretrained import load_pretrained_trainer

        trainer, _ = load_pretrained_trainer()
        print("Using the bundled pretrained model (erl_derain/pretrained/README.md); --model_dir selects another.",
              flush=True)
    model = as_inference_model(_predict_fn(trainer.inference_model()), trainer.pad_multiple)
    run = photos.local_runner(model, tile=FLAGS.tile, overlap=FLAGS.tile_overlap)
    written, skipped, failures = photos.derain_photos(files, output_dir, run, output_format=FLAGS.output_format,
                                                      overwrite=FLAGS.overwrite)
    return photos.report(written, skipped, failures, output_dir)


def cmd_export():
    from erl_derain.inference import as_inference_model
    from erl_derain.serving import export_saved_model, server_command_lines
    from erl_derain.training import load_trainer

    export_base = _require("export_base")
    if FLAGS.pretrained:
        from erl_derain.pretrained import load_pretrained_trainer

        trainer, info = load_pretrained_trainer()
        config = info["config"]
    else:
        trainer, config = load_trainer(_require("model_dir"))
    path = export_saved_model(as_inference_model(trainer.inference_model(), trainer.pad_multiple), export_base,
                              version=FLAGS.version, metadata={"method": config["method"], "config": config},
                              overwrite=FLAGS.overwrite)
    lines = server_command_lines(export_base)
    print(f"Exported SavedModel to {path}: signatures serving_default (images -> derained), derain_image "
          f"(image_bytes -> derained_png_bytes), metadata")
    print(f"Server files in {os.path.dirname(os.path.abspath(export_base))}: models.config, models.docker.config, "
          f"batching_parameters.txt. Serve with:\n  {lines['tensorflow_model_server']}\n  {lines['docker']}")


def cmd_synthesize():
    from erl_derain.data import rain_synthesis

    clean_dir = _require("clean_dir")
    output_dir = _require("output_dir")
    kwargs = {"layers": FLAGS.rain_layers, "accumulation": FLAGS.rain_accumulation}
    for flag, key in (("rain_density", "density"), ("rain_length", "length"), ("rain_intensity", "intensity")):
        if getattr(FLAGS, flag) is not None:
            kwargs[key] = getattr(FLAGS, flag)
    pairs = rain_synthesis.synthesize_folder(clean_dir, output_dir, renders_per_image=FLAGS.renders_per_image,
                                             seed=FLAGS.seed, **kwargs)
    print(f"Wrote {len(pairs)} rainy/clean pairs to {output_dir}/rainy and {output_dir}/clean "
          f"(train on them with --dataset=folder:{output_dir})")


def cmd_generate():
    """JRGR's rain generation: synthetic rainy images (--input_dir) -> realistic ones through the S2R
    path, or clean photos (--clean_dir) + synthesised rain layers -> B + G_r(R)."""
    import numpy as np
    import tensorflow as tf

    from erl_derain.data import rain_synthesis
    from erl_derain.data.image_io import list_images, load_rgb, save_rgb
    from erl_derain.inference import pad_to_multiple
    from erl_derain.methods import jrgr
    from erl_derain.training import load_trainer

    model_dir, output_dir = _require("model_dir"), _require("output_dir")
    if bool(FLAGS.input_dir) == bool(FLAGS.clean_dir):
        raise UsageError("give one of --input_dir (synthetic rainy images) or --clean_dir (clean photos)")
    trainer, config = load_trainer(model_dir)
    if config.get("method") != "jrgr":
        raise UsageError(f"--model_dir={model_dir} holds a {config.get('method')} run: generate needs a JRGR run")
    rng = np.random.default_rng(FLAGS.seed)
    files = list_images(FLAGS.input_dir or FLAGS.clean_dir)
    for path in files:
        image = load_rgb(path)
        x, h, w = pad_to_multiple(tf.constant(image[None]), trainer.pad_multiple)
        if FLAGS.input_dir:
            out = jrgr.synthetic_to_real(trainer, x)
        else:
            rainy, _ = rain_synthesis.synthesize_rain(x.numpy()[0], rng=rng)
            out = jrgr.generate_rain(trainer, x, tf.constant(rainy[None], tf.float32) - x)
        result = np.asarray(out)[0, :h, :w]
        out_path = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        save_rgb(out_path, result)
        print(f"  {path} -> {out_path}", flush=True)
    print(f"Generated {len(files)} realistic rainy image(s) into {output_dir}")
    return 0


def main(argv):
    global FLAGS_VERB
    if len(argv) < 2 or argv[1] not in VERBS:
        print(__doc__, file=sys.stderr)
        got = argv[1] if len(argv) > 1 else "nothing"
        print(f"erl-derain: expected a verb ({', '.join(VERBS)}), got {got}", file=sys.stderr)
        return 2
    verb, args = argv[1], argv[2:]
    FLAGS_VERB = verb
    if not FLAGS["verbosity"].present:  # TFDS and TF log every file they open at INFO
        logging.set_verbosity(logging.WARNING)
    if args and verb != "derain":
        print(f"erl-derain {verb}: unexpected arguments {args} (flags are written --name=value)", file=sys.stderr)
        return 2
    from erl_derain.data.pipelines import DatasetError
    from erl_derain.training import TrainingError

    try:
        if verb == "train":
            return cmd_train()
        if verb == "evaluate":
            return cmd_evaluate()
        if verb == "derain":
            return cmd_derain(args)
        if verb == "compare":
            return cmd_compare()
        if verb == "export":
            return cmd_export()
        if verb == "prepare":
            return cmd_prepare()
        if verb == "synthesize":
            return cmd_synthesize()
        if verb == "generate":
            return cmd_generate()
    except (UsageError, DatasetError, TrainingError, FileNotFoundError, FileExistsError, ValueError) as e:
        logging.debug("error", exc_info=True)
        print(f"erl-derain {verb}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # pylint: disable=broad-except
        if type(e).__name__ != "InvalidArgumentError":
            raise
        logging.debug("error", exc_info=True)
        if not _from_data_pipeline(e):
            print(f"erl-derain {verb}: error: TensorFlow rejected an operation: {_tf_message(e)} "
                  "(--verbosity=1 shows where)", file=sys.stderr)
            return 1
        # A file that passed the header scan but fails to decode while tf.data reads it (e.g. a
        # truncated JPEG): name it instead of showing TF's stack trace. Checkpoints are untouched.
        print(f"erl-derain {verb}: error: reading the data failed: {_tf_message(e)}", file=sys.stderr)
        for flag in ("dataset", "real_dataset"):
            value = getattr(FLAGS, flag, None)
            if value and value.startswith("folder:"):
                from erl_derain.data.pipelines import diagnose_folder

                split = FLAGS.split or ("train" if verb == "train" else "test")
                problems = diagnose_folder(value, split) if flag == "dataset" else []
                for file, problem in problems:
                    print(f"  {file}: {problem}", file=sys.stderr)
                if problems:
                    print("  fix or remove these files; the last checkpoint is kept", file=sys.stderr)
        return 1
    return 0


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


def run():
    app.run(main)


if __name__ == "__main__":
    run()
