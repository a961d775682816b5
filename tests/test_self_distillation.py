"""DSVM-UNet's projection and progressive self-distillation: hand-computed losses, gradients, shapes."""
import pytest
import torch

from nnunet_mamba.architectures import VMUNet
from nnunet_mamba.distillation import (
    PROGRESSIVE,
    PROJECTION,
    DualSelfDistillation,
    LevelFeatureTap,
    ProgressiveHead,
    feature_mse,
)
from nnunet_mamba.distillation.dual_self_distillation import SpatialProjection

DIMS = [2, 4, 8, 16]
STRIDES = [(2, 2)] * 3


def _constant_levels(values, size=16):
    """Channels-last level features, level l filled with values[l], on grids size, size/2, ..."""
    return [torch.full((1, size >> l, size >> l, DIMS[l]), float(v), requires_grad=True) for l, v in enumerate(values)]


def _select_first_channels(conv: torch.nn.Conv2d) -> None:
    """Make a 1x1 convolution copy input channels to its outputs (cyclically when it widens)."""
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(conv.out_channels):
            conv.weight[c, c % conv.in_channels] = 1.0
        if conv.bias is not None:
            conv.bias.zero_()


def test_projection_loss_matches_hand_computed_value():
    heads = DualSelfDistillation(DIMS, STRIDES, progressive=False)
    for head in [*heads.encoder_projection, *heads.decoder_projection]:
        _select_first_channels(head.channel)
    # projected level l is constant l (encoder) or 10 l (decoder) on the level-1 grid: nearest lift, channel copy
    losses = heads(_constant_levels([1, 2, 3, 4]), _constant_levels([10, 20, 30, 40]))
    # encoder: teacher f_1 = 1, students l = 1..4 -> (l - 1)^2; decoder: teacher 10, students l = 2..4 -> (10 l - 10)^2
    assert set(losses) == {PROJECTION}
    assert losses[PROJECTION].item() == pytest.approx((0 + 1 + 4 + 9) + (100 + 400 + 900))


def test_progressive_loss_matches_hand_computed_value():
    heads = DualSelfDistillation(DIMS, STRIDES, projection=False)
    for head in [*heads.encoder_progressive, *heads.decoder_progressive]:
        _select_first_channels(head.channel)
    losses = heads(_constant_levels([1, 2, 3, 4]), _constant_levels([10, 20, 30, 40]))
    # adjacent levels differ by 1 (encoder) and 10 (decoder); interpolating and widening a constant keep it
    assert set(losses) == {PROGRESSIVE}
    assert losses[PROGRESSIVE].item() == pytest.approx(3 * 1 + 3 * 100)


def test_progressive_head_upsamples_bilinearly_and_mse_is_elementwise_mean():
    head = ProgressiveHead(1, 1, spatial_dims=2)
    with torch.no_grad():
        head.channel.weight.fill_(1.0)
        head.channel.bias.zero_()
    upsampled = head(torch.tensor([[[[0.0, 4.0]]]]), size=(2, 4))
    # half-pixel centres: x = -0.25, 0.25, 0.75, 1.25 between samples 0 and 4 (clamped at the borders)
    assert upsampled.squeeze().tolist() == [[0.0, 1.0, 3.0, 4.0], [0.0, 1.0, 3.0, 4.0]]
    assert feature_mse(torch.zeros_like(upsampled), upsampled).item() == pytest.approx((0 + 1 + 9 + 16) / 4)


def test_spatial_projection_is_a_learned_per_channel_block_map_per_axis():
    lift = SpatialProjection(channels=2, scale=(2, 3))
    x = torch.tensor([5.0, -1.0]).view(1, 2, 1, 1)
    assert torch.equal(lift(x)[0, 0], torch.full((2, 3), 5.0))  # starts as nearest-neighbour upsampling
    with torch.no_grad():
        lift.lift.weight[0, 0] = torch.arange(6.0).view(2, 3)
    assert lift(x)[0, 0].tolist() == [[0.0, 5.0, 10.0], [15.0, 20.0, 25.0]]
    assert torch.equal(lift(x)[0, 1], torch.full((2, 3), -1.0))  # channels do not mix
    assert sum(p.numel() for p in lift.parameters()) == 2 * 2 * 3


def test_encoder_progressive_convolves_the_deeper_teacher_down_as_the_paper_by_a_fixed_projection():
    heads = DualSelfDistillation(DIMS, STRIDES, projection=False)
    # the paper: Conv2D(f_2^e) to f_1^e's channels, then upsampled
    assert [(h.channel.in_channels, h.channel.out_channels) for h in heads.encoder_progressive] == list(
        zip(DIMS[1:], DIMS[:3]))
    for head in heads.encoder_progressive:  # orthonormal rows, no bias, never trained
        weight = head.channel.weight.flatten(1)
        assert torch.allclose(weight @ weight.T, torch.eye(weight.shape[0]), atol=1e-5)
        assert head.channel.bias is None and not head.channel.weight.requires_grad
    with torch.no_grad():
        for head in heads.decoder_progressive:
            head.channel.weight.zero_()
            head.channel.bias.zero_()
    encoder = [torch.randn(1, 16 >> l, 16 >> l, DIMS[l]) for l in range(4)]
    decoder = [torch.zeros(1, 16 >> l, 16 >> l, DIMS[l]) for l in range(4)]
    loss = heads(encoder, decoder)[PROGRESSIVE]
    # by hand: the teacher's channels projected, then bilinearly upsampled to the student's grid
    expected = 0
    for l in range(1, 4):
        teacher = torch.movedim(encoder[l], -1, 1)
        weight = heads.encoder_progressive[l - 1].channel.weight.flatten(1)
        projected = torch.einsum("oc,bchw->bohw", weight, teacher)
        upsampled = torch.nn.functional.interpolate(projected, scale_factor=2, mode="bilinear", align_corners=False)
        expected = expected + ((torch.movedim(encoder[l - 1], -1, 1) - upsampled) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_student_side_option_convolves_the_shallower_student_up():
    heads = DualSelfDistillation(DIMS, STRIDES, projection=False, encoder_progressive="student_side")
    assert [(h.channel.in_channels, h.channel.out_channels) for h in heads.encoder_progressive] == list(
        zip(DIMS[:3], DIMS[1:]))
    for head in [*heads.encoder_progressive, *heads.decoder_progressive]:
        _select_first_channels(head.channel)
    losses = heads(_constant_levels([1, 2, 3, 4]), _constant_levels([10, 20, 30, 40]))
    assert losses[PROGRESSIVE].item() == pytest.approx(3 * 1 + 3 * 100)
    with pytest.raises(ValueError, match="encoder_progressive must be one of 'paper', 'student_side', got 'up'"):
        DualSelfDistillation(DIMS, STRIDES, encoder_progressive="up")


def test_trainers_offer_the_paper_direction_the_earlier_one_and_attached_teachers():
    from nnunet_mamba.discovery import load_trainer

    expected = {"nnUNetTrainerDSVMUNet": ("paper", True),
                "nnUNetTrainerDSVMUNetStudentSideProgressive": ("student_side", True),
                "nnUNetTrainerDSVMUNetAttachedTeachers": ("paper", False)}
    for name, (mode, detach) in expected.items():
        trainer = load_trainer(name)
        assert (trainer.encoder_progressive, trainer.detach_distillation_teachers) == (mode, detach), name


@pytest.mark.parametrize("mode", ["paper", "student_side"])
@pytest.mark.parametrize("detach", [True, False])
def test_gradients_reach_students_and_stop_at_detached_teachers(detach, mode):
    torch.manual_seed(0)
    encoder = [torch.randn(1, 16 >> l, 16 >> l, DIMS[l], requires_grad=True) for l in range(4)]
    decoder = [torch.randn(1, 16 >> l, 16 >> l, DIMS[l], requires_grad=True) for l in range(4)]
    heads = DualSelfDistillation(DIMS, STRIDES, detach_teachers=detach, encoder_progressive=mode)

    losses = heads(encoder, decoder)
    losses[PROJECTION].backward(retain_graph=True)
    # every level but the decoder's teacher f_1^d is a projection student
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in [*encoder, *decoder[1:]])
    assert (decoder[0].grad is None) == detach
    assert all(p.grad is not None for p in [*heads.encoder_projection.parameters(),
                                            *heads.decoder_projection.parameters()])

    for f in [*encoder, *decoder]:
        f.grad = None
    losses[PROGRESSIVE].backward()
    # progressive: f_4^e only teaches (encoder), f_1^d only teaches (decoder)
    assert all(f.grad is not None for f in [*encoder[:3], *decoder[1:]])
    assert (encoder[3].grad is None) == detach and (decoder[0].grad is None) == detach
    # no head learns to imitate its student: the paper's teacher-side projection is fixed, the option's head sits
    # on the shallower student and learns
    if mode == "paper":
        assert all(p.grad is None and not p.requires_grad for p in heads.encoder_progressive.parameters())
    else:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.encoder_progressive.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.decoder_progressive.parameters())


@pytest.mark.parametrize("conv_op, strides, patch", [
    (torch.nn.Conv2d, [4, 2, 2, 2], (64, 64)),
    (torch.nn.Conv2d, [(4, 2), (2, 2), (2, 1), (1, 2)], (48, 40)),
    (torch.nn.Conv3d, [(1, 4, 4), (1, 2, 2), (2, 2, 2), (2, 2, 2)], (8, 64, 64)),
])
def test_vm_unet_level_features_align_for_2d_3d_and_anisotropic_plans(conv_op, strides, patch):
    torch.manual_seed(0)
    network = VMUNet(1, 3, conv_op=conv_op, strides=strides, embed_dim=8, deep_supervision=True, drop_path_rate=0.0)
    heads = DualSelfDistillation.for_network(network)
    with LevelFeatureTap(*network.level_feature_modules()) as levels:
        outputs = network(torch.randn(2, 1, *patch))
    level_grids = [tuple(f.shape[1:-1]) for f in levels.encoder]
    expected_grid = [s // f for s, f in zip(patch, network.strides[0])]
    assert level_grids[0] == tuple(expected_grid)
    assert [tuple(f.shape[1:-1]) for f in levels.decoder] == level_grids
    assert [f.shape[-1] for f in levels.decoder] == network.level_dims

    channels_first = [torch.movedim(f, -1, 1) for f in levels.encoder]
    for head, feature in zip(heads.encoder_projection, channels_first):
        assert tuple(head(feature).shape) == (2, network.level_dims[0], *level_grids[0])
    for l, head in enumerate(heads.encoder_progressive, start=1):
        assert tuple(head(channels_first[l], level_grids[l - 1]).shape) == (2, network.level_dims[l - 1],
                                                                           *level_grids[l - 1])

    losses = heads(levels.encoder, levels.decoder)
    total = losses[PROJECTION] + 0.5 * losses[PROGRESSIVE]
    assert total.dim() == 0 and torch.isfinite(total)
    total.backward()
    # the distillation loss trains the backbone, down to the deepest encoder stage
    assert network.encoder.stages[3][0].ssm.in_proj.weight.grad.abs().sum() > 0
    assert all(o.grad_fn is not None for o in outputs)


def test_tap_removes_its_hooks_and_names_levels_that_did_not_run():
    network = VMUNet(1, 2, embed_dim=8)
    encoder_modules, decoder_modules = network.level_feature_modules()
    tap = LevelFeatureTap(encoder_modules, decoder_modules)
    with tap:
        network.encoder(network.stem(torch.randn(1, 1, 32, 32)))
    assert all(not m._forward_hooks for m in [*encoder_modules, *decoder_modules])
    assert len(tap.encoder) == 4
    with pytest.raises(RuntimeError, match=r"decoder level modules \[0, 1, 2, 3\] did not run"):
        tap.decoder


def test_wrong_level_features_get_a_named_error():
    heads = DualSelfDistillation(DIMS, STRIDES)
    levels = _constant_levels([1, 2, 3, 4])
    with pytest.raises(ValueError, match="expected 4 decoder level features, got 3"):
        heads(levels, levels[:3])
    wrong = [*levels[:2], torch.zeros(1, 4, 4, 5), levels[3]]
    with pytest.raises(ValueError, match="encoder level 3 has 5 channels"):
        heads(wrong, levels)
    with pytest.raises(ValueError, match="needs the projection loss, the progressive loss or both"):
        DualSelfDistillation(DIMS, STRIDES, projection=False, progressive=False)


def test_losses_stay_close_to_float32_under_bfloat16_autocast():
    torch.manual_seed(0)
    network = VMUNet(1, 2, embed_dim=8)
    heads = DualSelfDistillation.for_network(network)
    x = torch.randn(1, 1, 64, 64)
    with LevelFeatureTap(*network.level_feature_modules()) as levels:
        network(x)
    reference = heads(levels.encoder, levels.decoder)
    with torch.autocast("cpu", dtype=torch.bfloat16), LevelFeatureTap(*network.level_feature_modules()) as levels:
        network(x)
        mixed = heads(levels.encoder, levels.decoder)
    for name in reference:
        assert mixed[name].dtype == torch.float32
        assert mixed[name].item() == pytest.approx(reference[name].item(), rel=0.05)
