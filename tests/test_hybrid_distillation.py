"""UltraLBM-UNet-T's hybrid distillation terms against per-pixel float64 loops, gradients, dtypes and errors."""
import itertools
import math

import numpy as np
import pytest
import torch

from nnunet_mamba.distillation import hybrid
from nnunet_mamba.distillation import (
    HybridDistillationConfig,
    decoupled_kd,
    edge_kd,
    hybrid_distillation_terms,
    sobel_magnitude,
    spatial_attention_kd,
)


def _softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _pixels(tensor):
    """Per-pixel channel vectors (float64 lists) of a (B, C, *spatial) tensor, in a fixed pixel order."""
    array = tensor.detach().double().numpy()
    return [list(array[(b, slice(None), *index)]) for b in range(array.shape[0])
            for index in np.ndindex(*array.shape[2:])]


def _dkd_loop(student, teacher, target, alpha, beta, temperature, ignore_label=None):
    labels = [int(v[0]) for v in _pixels(target)]
    total, count = 0.0, 0
    for zs, zt, t in zip(_pixels(student), _pixels(teacher), labels):
        if t == ignore_label:
            continue
        ps = _softmax([z / temperature for z in zs])
        pt = _softmax([z / temperature for z in zt])
        tckd = _kl([pt[t], 1 - pt[t]], [ps[t], 1 - ps[t]])
        rest = [i for i in range(len(zs)) if i != t]
        nckd = _kl([pt[i] / (1 - pt[t]) for i in rest], [ps[i] / (1 - ps[t]) for i in rest])
        total += (alpha * tckd + beta * nckd) * temperature ** 2
        count += 1
    return total / count


def _attention_loop(student_maps, teacher_maps, tau):
    s, t = student_maps.detach().double().numpy(), teacher_maps.detach().double().numpy()
    kls = []
    for b, k in itertools.product(range(s.shape[0]), range(s.shape[1])):
        kls.append(_kl(_softmax([v / tau for v in t[b, k].ravel()]), _softmax([v / tau for v in s[b, k].ravel()])))
    return sum(kls) / len(kls)


def _sobel_loop(image):
    """Sobel magnitude of one 2D or 3D float64 array by explicit cross-correlation with zero padding."""
    derivative, smoothing = (-1, 0, 1), (1, 2, 1)
    dims = image.ndim
    out = np.zeros(image.shape)
    for index in np.ndindex(*image.shape):
        squared = 0.0
        for axis in range(dims):
            g = 0.0
            for offsets in itertools.product((-1, 0, 1), repeat=dims):
                neighbour = tuple(i + o for i, o in zip(index, offsets))
                if any(n < 0 or n >= size for n, size in zip(neighbour, image.shape)):
                    continue
                weight = 1
                for other, o in enumerate(offsets):
                    weight *= derivative[o + 1] if other == axis else smoothing[o + 1]
                g += weight * image[neighbour]
            squared += g * g
        out[index] = math.sqrt(squared + 1e-8)
    return out


def _sobel_maps_loop(maps):
    array = maps.detach().double().numpy()
    return np.stack([np.stack([_sobel_loop(array[b, c]) for c in range(array.shape[1])])
                     for b in range(array.shape[0])])


def test_multiclass_dkd_matches_per_pixel_loop_with_ignored_pixel():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 4, 3, 2, generator=generator) * 2
    teacher = torch.randn(2, 4, 3, 2, generator=generator) * 2
    target = torch.tensor([[[0, 1], [2, 3], [4, 1]], [[3, 3], [0, 2], [1, 0]]], dtype=torch.float32).unsqueeze(1)
    loss = decoupled_kd(student, teacher, target, alpha=1.5, beta=3.0, temperature=2.0, ignore_label=4)
    expected = _dkd_loop(student, teacher, target, 1.5, 3.0, 2.0, ignore_label=4)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the ignored pixel (label 4) is really excluded: a different teacher there changes nothing
    changed = teacher.clone()
    changed[0, :, 2, 0] += 5.0
    assert decoupled_kd(student, changed, target, 1.5, 3.0, 2.0, ignore_label=4).item() == pytest.approx(loss.item())


def test_dkd_3d_with_nnunet_float_target_matches_loop():
    generator = torch.Generator().manual_seed(1)
    student, teacher = (torch.randn(2, 1, 3, 2, 2, 2, generator=generator) * 3).unbind(0)
    target = torch.randint(0, 3, (1, 1, 2, 2, 2), generator=generator).float()
    loss = decoupled_kd(student, teacher, target, alpha=0.7, beta=2.0, temperature=1.0)
    assert loss.item() == pytest.approx(_dkd_loop(student, teacher, target, 0.7, 2.0, 1.0), rel=1e-5)


def test_dkd_with_every_pixel_ignored_is_zero():
    student, teacher = torch.randn(1, 3, 2, 2, requires_grad=True), torch.randn(1, 3, 2, 2)
    loss = decoupled_kd(student, teacher, torch.full((1, 1, 2, 2), 2.0), 8.0, 8.0, 1.0, ignore_label=2)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(student.grad) == 0


def test_two_class_exact_dkd_is_the_scaled_bernoulli_kl_and_ignores_beta():
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(2, 2, 4, 3, generator=generator) * 2
    teacher = torch.randn(2, 2, 4, 3, generator=generator) * 2
    target = torch.randint(0, 2, (2, 1, 4, 3), generator=generator).float()

    def bernoulli_kl_mean(temperature):
        kls = []
        for zs, zt in zip(_pixels(student), _pixels(teacher)):
            s = 1 / (1 + math.exp(-(zs[1] - zs[0]) / temperature))   # p_fg = sigmoid of the logit difference
            t = 1 / (1 + math.exp(-(zt[1] - zt[0]) / temperature))
            kls.append(t * math.log(t / s) + (1 - t) * math.log((1 - t) / (1 - s)))
        return sum(kls) / len(kls)

    official = decoupled_kd(student, teacher, target, alpha=8.0, beta=8.0, temperature=1.0)
    assert official.item() == pytest.approx(8.0 * bernoulli_kl_mean(1.0), rel=1e-5)
    # no probability here is beyond the official clamp, which therefore changes nothing
    clamped = decoupled_kd(student, teacher, target, alpha=8.0, beta=8.0, temperature=1.0, probability_clamp=1e-6)
    assert clamped.item() == pytest.approx(official.item(), rel=1e-6)
    softened = decoupled_kd(student, teacher, target, alpha=3.0, beta=8.0, temperature=2.0)
    assert softened.item() == pytest.approx(3.0 * 4.0 * bernoulli_kl_mean(2.0), rel=1e-5)
    # NCKD is zero for two classes, so beta and the labels have no effect
    for beta, labels in [(0.0, target), (100.0, target), (8.0, 1 - target), (8.0, torch.zeros_like(target))]:
        other = decoupled_kd(student, teacher, labels, alpha=8.0, beta=beta, temperature=1.0)
        assert other.item() == pytest.approx(official.item(), rel=1e-6)


# (teacher, student) logit differences z_fg - z_bg: both saturated the opposite ways, teacher saturated, student
# saturated, neither (beyond the clamp means |difference| > 13.8)
SATURATION_CASES = [(30.0, -30.0), (30.0, 5.0), (-3.0, 25.0), (1.0, -1.0)]


def _official_binary_kl(teacher_difference, student_difference, clamp):
    """train_distillation.py's per-pixel term, by hand in float64: p_fg = sigmoid, both clamped, Bernoulli KL."""
    def probability(difference):
        p = 1 / (1 + math.exp(-difference))
        return p if clamp is None else min(max(p, clamp), 1 - clamp)
    t, s = probability(teacher_difference), probability(student_difference)
    return t * (math.log(t) - math.log(s)) + (1 - t) * (math.log(1 - t) - math.log(1 - s))


def _saturation_logits():
    teacher = torch.tensor([[0.0, t] for t, _ in SATURATION_CASES]).T.reshape(1, 2, 1, 4)
    student = torch.tensor([[0.0, s] for _, s in SATURATION_CASES]).T.reshape(1, 2, 1, 4).requires_grad_()
    return student, teacher


def test_default_dkd_is_the_official_clamped_kl_at_saturation():
    student, teacher = _saturation_logits()
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 1, 4)
    default = hybrid_distillation_terms(student, teacher, target, terms=("dkd",))["dkd"]
    official = [_official_binary_kl(t, s, 1e-6) for t, s in SATURATION_CASES]
    assert official[0] == pytest.approx(13.8155, abs=1e-4)  # the cap: log((1 - 1e-6) / 1e-6) (1 - 2e-6)
    assert default.item() == pytest.approx(8.0 * sum(official) / 4, rel=1e-5)
    # the exact KL, a named option, is about twice as large here (30 nats on the first pixel instead of 13.8)
    exact_config = HybridDistillationConfig(dkd_probability_clamp=None)
    exact = hybrid_distillation_terms(student, teacher, target, exact_config, terms=("dkd",))["dkd"]
    unclamped = [_official_binary_kl(t, s, None) for t, s in SATURATION_CASES]
    assert exact.item() == pytest.approx(8.0 * sum(unclamped) / 4, rel=1e-5)
    assert exact.item() > 1.9 * default.item()

    # no gradient where the student is beyond the clamp (pixels 0 and 2), as in the official code
    (student_gradient,) = torch.autograd.grad(default, student)
    per_pixel = student_gradient.abs().sum(dim=1).flatten()
    assert per_pixel[0] == 0 and per_pixel[2] == 0 and per_pixel[1] > 0 and per_pixel[3] > 0
    (exact_gradient,) = torch.autograd.grad(exact, student)
    assert (exact_gradient.abs().sum(dim=1).flatten() > 0).all()


def test_trainer_distils_with_the_official_clamp():
    from nnunet_mamba.discovery import load_trainer

    assert load_trainer("nnUNetTrainerUltraLBMUNetT").distillation_config.dkd_probability_clamp == 1e-6


def test_dkd_is_finite_for_saturated_logits():
    # teacher certain (p_t rounds to 1 in float32), student certain of another class, and the reverse
    student = torch.tensor([[-300.0, 300.0, 0.0], [300.0, -300.0, 0.0]]).T.reshape(1, 3, 1, 2).requires_grad_()
    teacher = torch.tensor([[300.0, -300.0, 0.0], [-300.0, 300.0, 0.0]]).T.reshape(1, 3, 1, 2)
    target = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    loss = decoupled_kd(student, teacher, target, alpha=1.0, beta=8.0, temperature=1.0)
    assert torch.isfinite(loss) and loss.item() > 500   # ~600 nats: the student's log p_t is -600
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.mark.parametrize("spatial", [(3, 4), (2, 3, 2)], ids=["2d", "3d"])
def test_spatial_attention_kd_matches_loop(spatial):
    generator = torch.Generator().manual_seed(3)
    student = torch.rand(2, 2, *spatial, generator=generator)
    teacher = torch.rand(2, 2, *spatial, generator=generator)
    loss = spatial_attention_kd(student, teacher, temperature=0.5)
    assert loss.item() == pytest.approx(_attention_loop(student, teacher, 0.5), rel=1e-5)


def test_single_map_attention_equals_official_batchmean_kl_div():
    generator = torch.Generator().manual_seed(4)
    student, teacher = torch.rand(3, 1, 5, 5, generator=generator), torch.rand(3, 1, 5, 5, generator=generator)
    official = torch.nn.functional.kl_div(torch.softmax(student.view(3, -1) / 0.5, 1).log(),
                                          torch.softmax(teacher.view(3, -1) / 0.5, 1), reduction="batchmean")
    assert spatial_attention_kd(student, teacher, 0.5).item() == pytest.approx(official.item(), rel=1e-5)


def test_sobel_magnitude_of_a_2d_step_edge():
    image = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4).view(1, 1, 4, 4)
    magnitude = sobel_magnitude(image)[0, 0]
    # interior rows: gx = (1 + 2 + 1) * (1 - 0) = 4 next to the step, gy = 0
    assert magnitude[1, 1].item() == pytest.approx(4.0) and magnitude[2, 2].item() == pytest.approx(4.0)
    # zero padding: top row next to the step gx = (2 + 1) * 1 = 3, gy = 1 * 1 (below) - 0 (padding) = 1
    assert magnitude[0, 1].item() == pytest.approx(math.sqrt(10.0))
    # right border: gx = -(1 + 2 + 1) * 1, gy = 0 in the interior
    assert magnitude[1, 3].item() == pytest.approx(4.0)
    np.testing.assert_allclose(magnitude.double().numpy(), _sobel_loop(image[0, 0].double().numpy()), rtol=1e-6)
    assert magnitude.min().item() == pytest.approx(1e-4)   # sqrt(0 + 1e-8) in a flat interior


def test_sobel_magnitude_3d_matches_loop_and_treats_axes_alike():
    volume = torch.zeros(1, 1, 3, 3, 4)
    volume[..., 2:] = 1.0
    magnitude = sobel_magnitude(volume)
    # the centre voxel next to the step: derivative along W times the full 3x3 smoothing sum 16
    assert magnitude[0, 0, 1, 1, 1].item() == pytest.approx(16.0)
    np.testing.assert_allclose(magnitude[0, 0].numpy(), _sobel_loop(volume[0, 0].double().numpy()), rtol=1e-6)
    random = torch.rand(2, 3, 3, 4, 5, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(sobel_magnitude(random).numpy(), _sobel_maps_loop(random), rtol=1e-5)
    for axes in [(2, 3), (2, 4), (3, 4)]:
        torch.testing.assert_close(sobel_magnitude(random.transpose(*axes)), sobel_magnitude(random).transpose(*axes))


@pytest.mark.parametrize("spatial", [(4, 5), (3, 3, 4)], ids=["2d", "3d"])
def test_edge_kd_matches_loop(spatial):
    generator = torch.Generator().manual_seed(6)
    student, teacher = torch.rand(2, 2, *spatial, generator=generator), torch.rand(2, 2, *spatial, generator=generator)
    expected = np.mean((_sobel_maps_loop(student) - _sobel_maps_loop(teacher)) ** 2)
    assert edge_kd(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_hybrid_terms_use_the_foreground_softmax_channels():
    generator = torch.Generator().manual_seed(7)
    student, teacher = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, generator=generator)
    target = torch.randint(0, 3, (2, 1, 4, 4), generator=generator).float()
    config = HybridDistillationConfig(dkd_alpha=2.0, dkd_beta=5.0, dkd_temperature=3.0, attention_temperature=0.25)
    terms = hybrid_distillation_terms(student, teacher, target, config)
    assert set(terms) == {"dkd", "attention", "edge"}
    assert terms["dkd"].item() == pytest.approx(_dkd_loop(student, teacher, target, 2.0, 5.0, 3.0), rel=1e-5)
    student_fg, teacher_fg = torch.softmax(student, 1)[:, 1:], torch.softmax(teacher, 1)[:, 1:]
    assert terms["attention"].item() == pytest.approx(_attention_loop(student_fg, teacher_fg, 0.25), rel=1e-5)
    expected_edge = np.mean((_sobel_maps_loop(student_fg) - _sobel_maps_loop(teacher_fg)) ** 2)
    assert terms["edge"].item() == pytest.approx(expected_edge, rel=1e-5)


@pytest.mark.parametrize("subset", [("dkd",), ("attention", "edge"), ("edge",), ()])
def test_only_the_terms_asked_for_are_computed(subset, monkeypatch):
    generator = torch.Generator().manual_seed(8)
    student, teacher = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, generator=generator)
    target = torch.randint(0, 3, (2, 1, 4, 4), generator=generator).float()
    everything = hybrid_distillation_terms(student, teacher, target)
    computed = []
    for name in ("decoupled_kd", "spatial_attention_kd", "edge_kd"):
        original = getattr(hybrid, name)
        monkeypatch.setattr(hybrid, name, lambda *args, _f=original, _n=name, **kwargs: computed.append(_n) or
                            _f(*args, **kwargs))
    terms = hybrid_distillation_terms(student, teacher, target, terms=subset)
    assert set(terms) == set(subset)
    assert len(computed) == len(subset)  # a term not asked for is not computed
    for name in subset:
        assert torch.equal(terms[name], everything[name])


def test_an_unknown_term_is_named():
    logits, target = torch.randn(1, 2, 4, 4), torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"unknown hybrid distillation terms \['edges'\]"):
        hybrid_distillation_terms(logits, logits, target, terms=("dkd", "edges"))


def test_gradients_reach_the_student_and_never_the_teacher():
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 4, 4)).float()
    for name, loss in hybrid_distillation_terms(student, teacher, target).items():
        (grad,) = torch.autograd.grad(loss, student, retain_graph=True)
        assert grad.abs().sum() > 0, name
    sum(hybrid_distillation_terms(student, teacher, target).values()).backward()
    assert teacher.grad is None
    probs_s, probs_t = student.softmax(1), teacher.softmax(1)
    spatial_attention_kd(probs_s, probs_t, 0.5).backward(retain_graph=True)
    edge_kd(probs_s, probs_t).backward()
    decoupled_kd(student, teacher, target, 1.0, 1.0, 2.0).backward()
    assert teacher.grad is None


def test_float32_terms_from_half_precision_inputs_and_cpu_autocast():
    generator = torch.Generator().manual_seed(8)
    student, teacher = torch.randn(1, 3, 6, 6, generator=generator), torch.randn(1, 3, 6, 6, generator=generator)
    target = torch.randint(0, 3, (1, 1, 6, 6), generator=generator).float()
    reference = hybrid_distillation_terms(student.bfloat16().float(), teacher.bfloat16().float(), target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = hybrid_distillation_terms(student.bfloat16(), teacher.bfloat16(), target)
    for name in reference:
        assert mixed[name].dtype == torch.float32, name
        assert mixed[name].item() == pytest.approx(reference[name].item(), rel=1e-5), name
    halves = hybrid_distillation_terms(student.half(), teacher.half(), target.half())
    assert all(value.dtype == torch.float32 and torch.isfinite(value) for value in halves.values())


@pytest.mark.parametrize("spatial", [(5, 4), (3, 4, 2)], ids=["2d", "3d"])
def test_terms_vanish_when_student_equals_teacher(spatial):
    logits = torch.randn(2, 4, *spatial) * 3
    target = torch.randint(0, 4, (2, 1, *spatial)).float()
    terms = hybrid_distillation_terms(logits, logits.clone(), target, HybridDistillationConfig(dkd_temperature=2.0))
    for name, value in terms.items():
        assert abs(value.item()) < 1e-6, name


@pytest.mark.parametrize("field, value, message", [
    ("dkd_alpha", -1.0, "dkd_alpha must be a non-negative"),
    ("dkd_beta", float("nan"), "dkd_beta must be a non-negative"),
    ("dkd_temperature", 0.0, "dkd_temperature must be a positive"),
    ("attention_temperature", -0.5, "attention_temperature must be a positive"),
    ("dkd_probability_clamp", 0.5,
     r"probability_clamp must be None \(the exact KL\) or a number in \(0, 0.5\), got 0.5"),
])
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        HybridDistillationConfig(**{field: value})


def test_bad_inputs_get_named_errors():
    logits, target = torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="student and teacher logits shapes differ"):
        hybrid_distillation_terms(logits, torch.randn(2, 3, 4, 5), target)
    with pytest.raises(ValueError, match=r"target must hold class indices of shape \(B, 1, \*spatial\)"):
        hybrid_distillation_terms(logits, logits, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="logits need at least 2 channels"):
        hybrid_distillation_terms(logits[:, :1], logits[:, :1], target)
    with pytest.raises(ValueError, match=r"logits must be \(B, C, H, W\) or \(B, C, D, H, W\)"):
        hybrid_distillation_terms(logits[..., 0], logits[..., 0], target[..., 0])
    with pytest.raises(ValueError, match=r"target holds class indices outside \[0, 3\)"):
        decoupled_kd(logits, logits, torch.full((2, 1, 4, 4), 3.0), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="temperature must be a positive"):
        decoupled_kd(logits, logits, target, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="student and teacher probability maps shapes differ"):
        edge_kd(torch.rand(1, 1, 4, 4), torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match="student and teacher probability maps shapes differ"):
        spatial_attention_kd(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4), 0.5)
    with pytest.raises(ValueError, match=r"maps must be \(B, C, H, W\) or \(B, C, D, H, W\)"):
        sobel_magnitude(torch.rand(4, 4))
