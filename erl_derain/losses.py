"""Image losses shared by the trainers: MENET's three task losses (Eq. 3-8) and small generic ones.

Conventions
-----------
* Images are ``float32`` NHWC tensors in ``[0, 1]``; ``target`` (the clean image ``y``/``B``) comes
  first, ``output`` (the prediction ``y_hat``/``b``) second.
* Every loss returns a scalar ``tf.Tensor`` and is made of plain TF ops only (no variables, no
  Python-side state), so it can be called eagerly, inside a ``tf.function`` train step and in a
  ``tf.distribute`` replica context.  Each loss is a mean over the (per-replica) batch; scaling by
  the number of replicas is the trainer's business.

MENET ("Multi-Task Learning Enhanced Single Image De-Raining", section III.B)
-------------------------------------------------------------------------------
* ``L_p`` -- :func:`mse`, Eq. 3: ``||y - y_hat||_F^2 / (CHW)`` averaged over the batch (= the mean
  over every element, since all images of a batch have the same shape).
* ``L_e`` -- :func:`edge_loss`, Eq. 5: the same normalised squared distance between the Sobel maps
  ``phi(y)`` and ``phi(y_hat)`` (:func:`sobel_maps`).  ``phi`` is the paper's fixed "loss network":
  a depthwise convolution with a *constant* kernel (``tf.constant``, never a ``tf.Variable``, so no
  optimiser can ever train it).  The normalisation is the mean over every element of ``phi``'s
  output, i.e. Eq. 5's ``CHW`` is read with ``C`` = the channels of ``phi(y)`` (2 per image channel),
  which is exactly what the authors' code computes
  (``tf.losses.mean_squared_error`` on ``tf.image.sobel_edges`` maps).
* ``L_t`` -- :func:`texture_loss`, Eq. 7: Gram matrices of ``K x K`` patches (``K = 4``).

Sobel maps (:func:`sobel_maps`), following the authors' TF1 code (SumiHui/MENET,
``heavy/template/menet_*_edge*.py`` call ``tf.image.sobel_edges``):

* kernels, applied as a *cross-correlation* (TF convolutions do not flip the kernel)::

      dy = [[-1, -2, -1],        dx = [[-1, 0, 1],
            [ 0,  0,  0],              [-2, 0, 2],
            [ 1,  2,  1]]              [-1, 0, 1]]

  so ``dy`` is positive where the intensity grows downwards (row index increasing) and ``dx`` is
  positive where it grows to the right;
* padding ``"reflect"`` (default, what ``tf.image.sobel_edges`` does): the image is padded by one
  pixel with ``REFLECT`` mode (mirror without repeating the border pixel) and then convolved
  ``VALID``, so the maps keep the size ``H x W``.  ``padding="valid"`` skips the padding and gives
  ``(H - 2) x (W - 2)`` maps;
* channel order of the ``[B, H', W', 2C]`` result: interleaved per image channel,
  ``[dy(c0), dx(c0), dy(c1), dx(c1), ...]`` -- i.e. ``tf.image.sobel_edges(x)`` (shape
  ``[B, H, W, C, 2]``) reshaped to ``[B, H, W, 2C]``.

Texture matching loss (:func:`texture_loss`): ``X = space_to_depth(img, K)`` reshaped to
``[B, M, C K^2]`` with ``M = HW / K^2`` (48 features for RGB, K = 4), ``G = X^T X`` (a
``C K^2 x C K^2`` Gram matrix per image).  Two reductions:

* ``"frobenius"`` (default, the paper's Eq. 7, no normalisation): ``||G(y) - G(y_hat)||_F^2`` per
  image, averaged over the batch.  Note the size of this term: each Gram entry is a sum over ``M``
  patches, so the loss grows like ``M^2`` (``(HW)^2``) -- for 224 x 224 crops it can be orders of
  magnitude larger than ``L_p``, which matters for fixed weights and for LB weighting;
* ``"mean"`` (the authors' code, ``texture_matching_loss`` in SumiHui/MENET
  ``heavy/template/menet_*_gram_*.py``, and so the form behind Tables I-II): each Gram matrix is
  reduced to the mean of its entries, ``m = mean(G)``, and the loss is
  ``tf.losses.mean_squared_error`` of those per-image scalars, i.e. ``mean_b (m_b(y) - m_b(y_hat))^2``.
  On ``[0, 255]`` images it is huge (about 2.7e11 for random 64x64 images), which makes the authors'
  GB / LB weight of this task round to exactly 0 (see :mod:`erl_derain.weighting`).

Both sides must be multiples of ``K``: with static shapes a :class:`ValueError` is raised at trace
time; with unknown (dynamic) sides a ``tf.debugging`` assertion fails at run time.  Callers crop or
pad beforehand.

Value range: the losses take images on whatever scale they are given. The authors train on
``[0, 255]`` images (their output is clipped to ``[0, 255]`` and SSIM/PSNR use ``max_val=255``); on
``[0, 1]`` images ``L_p`` and ``L_e`` are ``255^2`` times smaller than theirs and the texture loss
``255^4`` times smaller. MENET's trainer (``--menet_value_range``, :mod:`erl_derain.methods.menet`)
scales its images to ``[0, V]`` before calling them; with ``V = 255`` and ``reduction="mean"`` they
equal the authors' ``mse``, ``edge_loss`` and ``content_loss`` (tested against the numbers their code
computes). That is the form and scale that produced the paper's Tables I-II; ``"frobenius"`` (Eq. 7)
remains the default here and an option of every flagfile.

Registry: :data:`TASK_LOSSES` maps MENET's task letters (``--tasks=p,e,t``) to the loss functions;
:func:`parse_tasks` validates such a flag value and :func:`task_losses` evaluates the chosen ones.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

__all__ = [
    "SOBEL_DY",
    "SOBEL_DX",
    "SOBEL_PADDINGS",
    "TEXTURE_REDUCTIONS",
    "TASK_LOSSES",
    "TASK_DESCRIPTIONS",
    "mse",
    "l1",
    "charbonnier",
    "sobel_kernel",
    "sobel_maps",
    "edge_loss",
    "patch_features",
    "gram_matrices",
    "texture_loss",
    "parse_tasks",
    "task_losses",
    "colour_cosine",
    "gaussian_sigma",
    "gaussian_lowpass",
    "segmentation_ce",
]

# Sobel kernels, indexed [row, column] and applied as cross-correlations (see the module docstring).
SOBEL_DY = np.array([[-1.0, -2.0, -1.0],
                     [0.0, 0.0, 0.0],
                     [1.0, 2.0, 1.0]], dtype=np.float32)
SOBEL_DX = np.ascontiguousarray(SOBEL_DY.T)  # [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]

SOBEL_PADDINGS = ("reflect", "valid")
TEXTURE_REDUCTIONS = ("frobenius", "mean")


def _pair(target, output) -> Tuple[tf.Tensor, tf.Tensor]:
    target = tf.convert_to_tensor(target)
    output = tf.convert_to_tensor(output)
    if not target.dtype.is_floating:
        target = tf.cast(target, tf.float32)
    output = tf.cast(output, target.dtype)
    if target.shape.is_fully_defined() and output.shape.is_fully_defined() and target.shape != output.shape:
        raise ValueError(f"target and output shapes differ: {target.shape} vs {output.shape}")
    return target, output


def _images(images) -> tf.Tensor:
    images = tf.convert_to_tensor(images)
    if not images.dtype.is_floating:
        images = tf.cast(images, tf.float32)
    if images.shape.rank is not None and images.shape.rank != 4:
        raise ValueError(f"expected NHWC images of rank 4, got shape {images.shape}")
    return images


# -- generic pixel losses ------------------------------------------------------------------------

def mse(target, output) -> tf.Tensor:
    """``L_p`` (MENET Eq. 3): mean over the batch of ``||y - y_hat||_F^2 / (CHW)``."""
    target, output = _pair(target, output)
    return tf.reduce_mean(tf.math.squared_difference(target, output))


def l1(target, output) -> tf.Tensor:
    """Mean absolute error over every element."""
    target, output = _pair(target, output)
    return tf.reduce_mean(tf.abs(target - output))


def charbonnier(target, output, eps: float = 1e-3) -> tf.Tensor:
    """Charbonnier loss: mean over every element of ``sqrt((y - y_hat)^2 + eps^2)``."""
    target, output = _pair(target, output)
    eps = tf.constant(eps, dtype=target.dtype)
    return tf.reduce_mean(tf.sqrt(tf.math.squared_difference(target, output) + tf.square(eps)))


# -- edge-aware loss (MENET Eq. 5-6) ----------------------------------------------------------------

def sobel_kernel(channels: int, dtype=tf.float32) -> tf.Tensor:
    """The constant depthwise kernel ``[3, 3, channels, 2]``: ``[..., c, 0] = dy``, ``[..., c, 1] = dx``.

    A ``tf.constant`` (never a variable): nothing can train it."""
    kernel = np.stack([SOBEL_DY, SOBEL_DX], axis=-1)[:, :, None, :]  # [3, 3, 1, 2]
    return tf.constant(np.tile(kernel, (1, 1, int(channels), 1)), dtype=dtype)


def sobel_maps(images, padding: str = "reflect") -> tf.Tensor:
    """MENET's fixed loss network ``phi``: Sobel ``dy`` and ``dx`` maps of every channel.

    Args:
      images: ``[B, H, W, C]`` float images (H, W >= 2 for ``"reflect"``, >= 3 for ``"valid"``).
      padding: ``"reflect"`` (default; 1-pixel REFLECT pad then VALID convolution, as
        ``tf.image.sobel_edges`` in the authors' code -- output ``H x W``) or ``"valid"`` (no
        padding, output ``(H-2) x (W-2)``).

    Returns:
      ``[B, H', W', 2C]`` with channels ``[dy(c0), dx(c0), dy(c1), dx(c1), ...]``.
    """
    if padding not in SOBEL_PADDINGS:
        raise ValueError(f"padding must be one of {SOBEL_PADDINGS}, got {padding!r}")
    images = _images(images)
    channels = images.shape[-1]
    if channels is not None:
        kernel = sobel_kernel(channels, images.dtype)
    else:  # unknown channel count: tile the one-channel kernel at run time
        kernel = tf.tile(sobel_kernel(1, images.dtype), tf.stack([1, 1, tf.shape(images)[-1], 1]))
    if padding == "reflect":
        images = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(images, kernel, strides=[1, 1, 1, 1], padding="VALID")


def edge_loss(target, output, padding: str = "reflect") -> tf.Tensor:
    """``L_e`` (MENET Eq. 5): mean squared difference of :func:`sobel_maps` of target and output
    (mean over every element of the ``[B, H', W', 2C]`` maps, as the authors' code)."""
    target, output = _pair(target, output)
    return tf.reduce_mean(tf.math.squared_difference(sobel_maps(target, padding), sobel_maps(output, padding)))


# -- texture matching loss (MENET Eq. 7-8) ----------------------------------------------------------

def patch_features(images, patch: int = 4) -> tf.Tensor:
    """``(img)_p`` of Eq. 7 as rows: ``space_to_depth(img, patch)`` reshaped to ``[B, M, C*patch^2]``
    with ``M = HW / patch^2``.  Sides must be multiples of ``patch`` (ValueError for static shapes,
    a run-time assertion otherwise)."""
    images = _images(images)
    patch = int(patch)
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch}")
    h, w, c = images.shape[1], images.shape[2], images.shape[3]
    for name, side in (("height", h), ("width", w)):
        if side is not None and side % patch:
            raise ValueError(f"texture loss: image {name} {side} is not a multiple of the patch size "
                             f"{patch}; crop or pad the images first")
    if patch > 1 and (h is None or w is None):
        dyn = tf.shape(images)
        with tf.control_dependencies([
                tf.debugging.assert_equal(dyn[1:3] % patch, 0, message=(
                    f"texture loss: image sides must be multiples of the patch size {patch}"))]):
            images = tf.identity(images)
    feats = tf.nn.space_to_depth(images, patch) if patch > 1 else images
    depth = c * patch * patch if c is not None else -1
    return tf.reshape(feats, [tf.shape(feats)[0], -1, depth])


def gram_matrices(images, patch: int = 4) -> tf.Tensor:
    """``G = X^T X`` per image for ``X = patch_features(images, patch)``: ``[B, C p^2, C p^2]``."""
    x = patch_features(images, patch)
    return tf.matmul(x, x, transpose_a=True)


def texture_loss(target, output, *, patch: int = 4, reduction: str = "frobenius") -> tf.Tensor:
    """``L_t`` (MENET Eq. 7) between the patch Gram matrices of target and output.

    reduction:
      ``"frobenius"`` -- the paper: ``||G(y) - G(y_hat)||_F^2`` per image (no normalisation),
      averaged over the batch.
      ``"mean"`` -- the authors' code: ``mean_b (mean(G_b(y)) - mean(G_b(y_hat)))^2``.
    """
    if reduction not in TEXTURE_REDUCTIONS:
        raise ValueError(f"texture reduction must be one of {TEXTURE_REDUCTIONS}, got {reduction!r}")
    target, output = _pair(target, output)
    g_target = gram_matrices(target, patch)
    g_output = gram_matrices(output, patch)
    if reduction == "frobenius":
        return tf.reduce_mean(tf.reduce_sum(tf.math.squared_difference(g_target, g_output), axis=[1, 2]))
    return tf.reduce_mean(tf.math.squared_difference(tf.reduce_mean(g_target, axis=[1, 2]),
                                                     tf.reduce_mean(g_output, axis=[1, 2])))


# -- MENET task registry ---------------------------------------------------------------------------

LossFn = Callable[..., tf.Tensor]

TASK_LOSSES: Dict[str, LossFn] = {"p": mse, "e": edge_loss, "t": texture_loss}
TASK_DESCRIPTIONS: Dict[str, str] = {
    "p": "reconstruction (pixel MSE, Eq. 3)",
    "e": "edge-aware (MSE of Sobel maps, Eq. 5)",
    "t": "texture matching (patch Gram matrices, Eq. 7)",
}


def parse_tasks(tasks: str | Sequence[str], flag: str = "--tasks") -> Tuple[str, ...]:
    """``"p,e,t"`` (or a sequence of letters) -> ``("p", "e", "t")``.

    Raises ValueError naming ``flag`` for an empty list, an unknown letter or a repeated one."""
    items = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t).strip() for t in tasks]
    items = [t for t in items if t]
    if not items:
        raise ValueError(f"{flag} must name at least one task of {sorted(TASK_LOSSES)}")
    unknown = [t for t in items if t not in TASK_LOSSES]
    if unknown:
        known = ", ".join(f"{k} = {v}" for k, v in TASK_DESCRIPTIONS.items())
        raise ValueError(f"{flag}: unknown task(s) {unknown}; known: {known}")
    if len(set(items)) != len(items):
        raise ValueError(f"{flag}: a task is listed twice: {items}")
    return tuple(items)


def task_losses(tasks: Sequence[str], target, output, *, texture_patch: int = 4,
                texture_reduction: str = "frobenius", edge_padding: str = "reflect") -> Dict[str, tf.Tensor]:
    """Evaluate the MENET task losses named in ``tasks`` (letters of :data:`TASK_LOSSES`), in order.

    Returns ``{letter: scalar loss}`` -- the input :class:`erl_derain.weighting.TaskWeighting` takes."""
    out: Dict[str, tf.Tensor] = {}
    for task in parse_tasks(tasks):
        if task == "t":
            out[task] = texture_loss(target, output, patch=texture_patch, reduction=texture_reduction)
        elif task == "e":
            out[task] = edge_loss(target, output, padding=edge_padding)
        else:
            out[task] = TASK_LOSSES[task](target, output)
    return out


# --------------------------------------------------------------------------------------------------
# Intensity-aware deraining (Xu et al., TIP 2021, Section III.C)
# --------------------------------------------------------------------------------------------------


def colour_cosine(target, output, eps: float = 1e-8) -> tf.Tensor:
    """L_col, Eq. 4: ``1 - mean_i cos(X_i, X_i^gt)`` over the pixels' RGB vectors (magnitude-free
    colour alignment). ``eps`` keeps black pixels finite: their cosine counts as 0."""
    y, x = _pair(target, output)
    dot = tf.reduce_sum(x * y, axis=-1)
    norms = tf.norm(x, axis=-1) * tf.norm(y, axis=-1)
    return 1.0 - tf.reduce_mean(dot / (norms + eps))


def gaussian_sigma(kernel_size: int) -> float:
    """Sigma of the ``kernel_size`` Gaussian: the rule of OpenCV's ``getGaussianKernel`` for a size
    without a sigma, ``0.3 * ((k - 1) / 2 - 1) + 0.8`` (our choice: the paper gives only the kernel
    sizes 3, 5, 7, 9)."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


def gaussian_lowpass(images, kernel_size: int = 5) -> tf.Tensor:
    """The low-frequency ground truth X_f^gt of the intensity-aware paper: each channel filtered with
    a ``kernel_size`` x ``kernel_size`` Gaussian (sigma from :func:`gaussian_sigma`), reflect padding
    so the size is kept."""
    if kernel_size not in (3, 5, 7, 9):
        raise ValueError(f"--gaussian_kernel must be 3, 5, 7 or 9 (the paper's sizes), got {kernel_size}")
    x = _images(images)
    sigma = gaussian_sigma(kernel_size)
    r = kernel_size // 2
    g = tf.exp(-tf.square(tf.range(-r, r + 1, dtype=tf.float32)) / (2.0 * sigma * sigma))
    g = g / tf.reduce_sum(g)
    channels = x.shape[-1]
    kernel = tf.tile((g[:, None] * g[None, :])[:, :, None, None], [1, 1, channels, 1])
    padded = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(padded, tf.cast(kernel, x.dtype), [1, 1, 1, 1], "VALID")


def segmentation_ce(labels, logits, ignore_label: int = 255) -> tf.Tensor:
    """L_seg: pixel-wise softmax cross-entropy of ``logits`` [B, H, W, K] against integer ``labels``
    [B, H, W] or [B, H, W, 1], averaged over the pixels whose label is not ``ignore_label``
    (Cityscapes' 255); 0 when every pixel is ignored."""
    labels = tf.cast(labels, tf.int32)
    if labels.shape.rank == 4:
        labels = labels[..., 0]
    valid = tf.not_equal(labels, ignore_label)
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=tf.cast(logits, tf.float32))
    weights = tf.cast(valid, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(ce * weights), tf.reduce_sum(weights))
