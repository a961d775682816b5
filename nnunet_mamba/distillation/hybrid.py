"""UltraLBM-UNet-T's hybrid knowledge distillation (Eqs. 14-17 of the paper), as pure loss terms.

A frozen teacher (the full UltraLBM-UNet) supervises a half-width student through three unweighted terms,
all on the **final output maps only** (no feature taps, no extra heads, nothing at inference):

``dkd``: decoupled knowledge distillation (Zhao et al. 2022) per pixel, with the pixel's ground-truth label
    as its target class t. With p = softmax(z / T) and b = [p_t, 1 - p_t]::

        TCKD = KL(b^T || b^S)            NCKD = KL(p^^T || p^^S),  p^_i = p_i / (1 - p_t) for i != t
        L_DKD = mean over pixels of (alpha * TCKD + beta * NCKD) * T^2

    Everything is computed from log-softmax (log(1 - p_t) as a log-sum-exp over the non-target classes), so
    saturated logits give finite values and gradients. Pixels labelled ``ignore_label`` are left out.
    **Binary reduction:** with two classes b is the whole distribution and the non-target distribution has a
    single element, so NCKD = 0 and L_DKD = alpha * T^2 * mean Bernoulli KL(p_fg^T || p_fg^S) whatever the
    label. The paper's Eq. 14 and the official ``8.0 * kl.mean()`` are this with alpha = 8, T = 1 (hence the
    defaults; beta = 8 is DKD's CIFAR default and only matters for three or more classes).
    **The official clamp** (``probability_clamp``, default 1e-6 in :class:`HybridDistillationConfig`): the
    official code clamps the teacher's and the student's p_fg to [1e-6, 1 - 1e-6] before its Bernoulli KL.
    That caps the per-pixel term at about 13.8 nats and gives no gradient where the student's probability is
    beyond the clamp, i.e. confident pixels stop pulling. Here b^T and b^S (p_t and 1 - p_t) are clamped the
    same way, which for two classes is exactly the official clamp (the clamp is symmetric) and leaves NCKD as
    it is. ``probability_clamp=None`` gives the exact, unclamped KL (a teacher at logit difference +24 and a
    student at -24: 24 nats instead of 13.8, with gradients the official code does not have).
``attention``: a spatial-softmax KL (Eqs. 15-16), not Zagoruyko-Komodakis attention transfer. For every
    foreground probability map P of a sample, A = softmax(vec(P) / tau) over all its pixels / voxels;
    KL(A^T || A^S) summed over the pixels, averaged over samples and foreground maps (the official
    ``F.kl_div(..., reduction='batchmean')`` for its single map).
``edge``: "gradient matching" (Eq. 17) means spatial Sobel gradients of the foreground probability maps:
    ``F.mse_loss`` (a mean, as the official code, not Eq. 17's squared norm) between the student's and the
    teacher's Sobel magnitudes sqrt(sum_axes g^2 + 1e-8). 2D: the 3x3 Sobel pair (cross-correlation, zero
    padding 1); 3D (our extension): per axis the derivative [-1, 0, 1] along it times the smoothing
    [1, 2, 1] along the two others.

Foreground maps are nnU-Net's softmax channels 1..C-1 (for C = 2 exactly the official sigmoid output p_fg);
:func:`spatial_attention_kd`, :func:`edge_kd` and :func:`sobel_magnitude` take such maps directly, one map per
channel, so a single-logit sigmoid head can pass its probabilities unchanged. The attention and edge terms use
the untempered probabilities, and every pixel, ignored ones included: they match the teacher's prediction,
not the labels.

The official weights, which the trainer applies: L = L_seg + 0.5 L_DKD + 0.2 L_AT + 0.3 L_grad (with the x8
inside L_DKD, an effective 4 on the binary KL); no warm-up, no T^2 at the official T = 1. The official
distillation script cannot run as published: it imports a model module and ``model_stats`` that are not in
the repository and, after one epoch, reads a ``boundary_loss`` entry it never writes; it also stores an unused
temperature of 3, selects the student by training loss and falls back to ``strict=False`` when the teacher's
checkpoint does not match. These terms follow its loss code, which is intact.

All terms are computed in float32 with autocast off, and the teacher is detached inside every function, so no
gradient can reach it even when the caller forgets ``torch.no_grad()``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_SOBEL_DERIVATIVE = (-1.0, 0.0, 1.0)
_SOBEL_SMOOTHING = (1.0, 2.0, 1.0)
_MAGNITUDE_EPS = 1e-8


def _check_temperature(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_weight(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")


def _check_probability_clamp(value: float | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and 0 < value < 0.5):
        raise ValueError(f"probability_clamp must be None (the exact KL) or a number in (0, 0.5), got {value!r}")


#: the official train_distillation.py clamps both probabilities to [1e-6, 1 - 1e-6] before its KL
OFFICIAL_PROBABILITY_CLAMP = 1e-6


@dataclass(frozen=True)
class HybridDistillationConfig:
    dkd_alpha: float = 8.0        # the official x8 on the per-pixel binary KL, which is the target-class part
    dkd_beta: float = 8.0         # DKD's CIFAR default for the non-target part (zero for two classes)
    dkd_temperature: float = 1.0
    #: the target-class probabilities are clamped to [c, 1 - c] before the KL (the official code); None: exact KL
    dkd_probability_clamp: float | None = OFFICIAL_PROBABILITY_CLAMP
    attention_temperature: float = 0.5

    def __post_init__(self):
        _check_weight("dkd_alpha", self.dkd_alpha)
        _check_weight("dkd_beta", self.dkd_beta)
        _check_temperature("dkd_temperature", self.dkd_temperature)
        _check_probability_clamp(self.dkd_probability_clamp)
        _check_temperature("attention_temperature", self.attention_temperature)


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"student and teacher {what} shapes differ: student {tuple(student.shape)}, "
                         f"teacher {tuple(teacher.shape)}")
    if student.dim() not in (4, 5):
        raise ValueError(f"{what} must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(student.shape)}")


def _check_logits_and_target(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                             target: torch.Tensor) -> None:
    _check_pair(student_logits, teacher_logits, "logits")
    if student_logits.shape[1] < 2:
        raise ValueError(f"logits need at least 2 channels (background and a class, nnU-Net's softmax head), "
                         f"got {student_logits.shape[1]}")
    expected = (student_logits.shape[0], 1, *student_logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target must hold class indices of shape (B, 1, *spatial) = {expected} to match the "
                         f"logits, got {tuple(target.shape)}")


def _float32_no_autocast(tensor: torch.Tensor):
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def decoupled_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                 alpha: float, beta: float, temperature: float, ignore_label: int | None = None,
                 probability_clamp: float | None = None) -> torch.Tensor:
    """Per-pixel DKD with the ground-truth class as target class, mean over the non-ignored pixels (0 if none).

    ``probability_clamp``: None, the exact KL (DKD's own); c, p_t and 1 - p_t of both clamped to [c, 1 - c] in
    TCKD (the official UltraLBM code with c = 1e-6, see the module docstring)."""
    _check_logits_and_target(student_logits, teacher_logits, target)
    _check_weight("alpha", alpha)
    _check_weight("beta", beta)
    _check_temperature("temperature", temperature)
    _check_probability_clamp(probability_clamp)
    num_classes = student_logits.shape[1]
    with _float32_no_autocast(student_logits):
        labels = target[:, 0].long()
        valid = torch.ones_like(labels, dtype=torch.bool) if ignore_label is None else labels != ignore_label
        out_of_range = ((labels < 0) | (labels >= num_classes)) & valid
        message = f"target holds class indices outside [0, {num_classes}) (ignore_label={ignore_label})"
        if labels.device.type == "cpu":
            if bool(out_of_range.any()):
                raise ValueError(message)
        else:  # reading the answer back every step would stall the GPU: the check fails the step on the device
            torch._assert_async(~out_of_range.any(), message)
        is_target = F.one_hot(torch.where(valid, labels, 0), num_classes).movedim(-1, 1).bool()

        log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
        log_p_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)

        def binary_log_probs(log_p):
            """log p_t and log(1 - p_t), the latter as a log-sum-exp over the other classes (exact near p_t = 1)."""
            return (log_p.masked_fill(~is_target, float("-inf")).logsumexp(dim=1),
                    log_p.masked_fill(is_target, float("-inf")).logsumexp(dim=1))

        log_pt_student, log_rest_student = binary_log_probs(log_p_student)
        log_pt_teacher, log_rest_teacher = binary_log_probs(log_p_teacher)
        if probability_clamp is None:
            binary_student = (log_pt_student, log_rest_student)
            binary_teacher = (log_pt_teacher, log_rest_teacher)
        else:
            # clamping log p is clamping p (log is monotonic) without float32's cancellation in 1 - p; p_t beyond
            # 1 - c puts 1 - p_t below c, so both ends saturate together, and the clamp passes no gradient there
            low, high = math.log(probability_clamp), math.log1p(-probability_clamp)
            binary_student = tuple(v.clamp(low, high) for v in (log_pt_student, log_rest_student))
            binary_teacher = tuple(v.clamp(low, high) for v in (log_pt_teacher, log_rest_teacher))
        tckd = sum(log_teacher.exp() * (log_teacher - log_student)
                   for log_teacher, log_student in zip(binary_teacher, binary_student))

        # non-target distributions renormalised: log p^_i = log p_i - log(1 - p_t). The target channel is set to
        # log 1 in both, so it adds 1 * (0 - 0); exponentiating its p_t / (1 - p_t) would overflow to inf for a
        # confident teacher and turn the masked-out gradient into NaN.
        log_q_student = (log_p_student - log_rest_student.unsqueeze(1)).masked_fill(is_target, 0.0)
        log_q_teacher = (log_p_teacher - log_rest_teacher.unsqueeze(1)).masked_fill(is_target, 0.0)
        nckd = (log_q_teacher.exp() * (log_q_teacher - log_q_student)).sum(dim=1)

        per_pixel = (alpha * tckd + beta * nckd) * temperature ** 2
        valid_f = valid.float()
        return (per_pixel * valid_f).sum() / valid_f.sum().clamp(min=1.0)


def spatial_attention_kd(student_probs: torch.Tensor, teacher_probs: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """KL(A_T || A_S) of the spatial softmaxes of every map, summed over pixels, mean over samples and maps.

    ``*_probs``: foreground probability maps (B, K, *spatial), one map per channel."""
    _check_pair(student_probs, teacher_probs, "probability maps")
    _check_temperature("temperature", temperature)
    with _float32_no_autocast(student_probs):
        log_attention_s = F.log_softmax(student_probs.float().flatten(2) / temperature, dim=-1)
        log_attention_t = F.log_softmax(teacher_probs.detach().float().flatten(2) / temperature, dim=-1)
        kl = (log_attention_t.exp() * (log_attention_t - log_attention_s)).sum(dim=-1)
        return kl.mean()


def sobel_magnitude(maps: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude sqrt(sum_axes g^2 + 1e-8), zero padding, same shape as ``maps``.

    ``maps``: (B, C, H, W) or (B, C, D, H, W)."""
    if maps.dim() not in (4, 5):
        raise ValueError(f"maps must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(maps.shape)}")
    spatial_dims = maps.dim() - 2
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    derivative = torch.tensor(_SOBEL_DERIVATIVE, dtype=maps.dtype, device=maps.device)
    smoothing = torch.tensor(_SOBEL_SMOOTHING, dtype=maps.dtype, device=maps.device)
    # every channel convolved on its own: channels folded into the batch
    flat = maps.reshape(-1, 1, *maps.shape[2:])
    squared = torch.zeros_like(flat)
    for axis in range(spatial_dims):
        factors = [derivative if other == axis else smoothing for other in range(spatial_dims)]
        kernel = functools.reduce(lambda outer, factor: torch.tensordot(outer, factor, dims=0), factors)
        squared = squared + conv(flat, kernel.view(1, 1, *kernel.shape), padding=1) ** 2
    return torch.sqrt(squared + _MAGNITUDE_EPS).view(maps.shape)


def edge_kd(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the student's and teacher's Sobel magnitudes of the maps (B, K, *spatial)."""
    _check_pair(student_probs, teacher_probs, "probability maps")
    with _float32_no_autocast(student_probs):
        return F.mse_loss(sobel_magnitude(student_probs.float()), sobel_magnitude(teacher_probs.detach().float()))


HYBRID_TERMS = ("dkd", "attention", "edge")


def hybrid_distillation_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                              config: HybridDistillationConfig = HybridDistillationConfig(),
                              ignore_label: int | None = None,
                              terms: tuple[str, ...] = HYBRID_TERMS) -> dict[str, torch.Tensor]:
    """{"dkd": ..., "attention": ..., "edge": ...}: unweighted float32 scalars; the teacher is detached inside.

    ``*_logits``: (B, C, *spatial) softmax logits, C >= 2; ``target``: (B, 1, *spatial) class indices as
    nnU-Net gives them (any dtype). Attention and edge terms use the foreground softmax channels 1..C-1.
    ``terms``: the ones to compute (a trainer that weighs a term 0 need not pay for it)."""
    unknown = [name for name in terms if name not in HYBRID_TERMS]
    if unknown:
        raise ValueError(f"unknown hybrid distillation terms {unknown}; the terms are {list(HYBRID_TERMS)}")
    _check_logits_and_target(student_logits, teacher_logits, target)
    with _float32_no_autocast(student_logits):
        student = student_logits.float()
        teacher = teacher_logits.detach().float()
        result = {}
        if "dkd" in terms:
            result["dkd"] = decoupled_kd(student, teacher, target, config.dkd_alpha, config.dkd_beta,
                                         config.dkd_temperature, ignore_label, config.dkd_probability_clamp)
        if "attention" in terms or "edge" in terms:
            student_foreground = torch.softmax(student, dim=1)[:, 1:]
            teacher_foreground = torch.softmax(teacher, dim=1)[:, 1:]
            if "attention" in terms:
                result["attention"] = spatial_attention_kd(student_foreground, teacher_foreground,
                                                           config.attention_temperature)
            if "edge" in terms:
                result["edge"] = edge_kd(student_foreground, teacher_foreground)
        return result
