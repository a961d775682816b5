"""Helpers shared by several test modules, so that test modules do not import from each other.

- the selective scan: random inputs in mamba-ssm's shapes, a forward+backward runner and a tolerance check
  relative to the expected values' size (the float64 reference itself is package API,
  :func:`nnunet_mamba.ops.selective_scan_ref`);
- VMamba v0 checkpoints: a synthetic one of VMamba's exact layout, and VMamba's block and merging written
  from its published semantics, independently of our modules;
- dataset converters: tiny source files (NIfTI volumes, RGB images, masks) and the ``convert`` command;
- the ``evaluate`` command.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch, dim, d_state, seq_len, groups, bc_3d=False, softplus=True, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    if softplus:
        delta = randn(batch, dim, seq_len) - 2.0  # softplus(~N(-2,1)) as in Mamba's dt init
    else:
        delta = F.softplus(randn(batch, dim, seq_len) - 2.0)
    # a few very large steps: exp(delta*A) underflows to 0 and must not produce inf/nan
    large = torch.rand(batch, dim, seq_len, generator=generator) < 0.02
    delta = torch.where(large, torch.full_like(delta, 30.0), delta)
    bc_shape = (batch, d_state, seq_len) if bc_3d else (batch, groups, d_state, seq_len)
    return {
        "u": randn(batch, dim, seq_len),
        "delta": delta,
        "A": -torch.exp(randn(dim, d_state)),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim),
        "z": randn(batch, dim, seq_len),
        "delta_bias": 0.5 * randn(dim),
    }


def run_with_grads(fn, inputs, used, grad_out, dtype, **kwargs):
    leaves = {name: inputs[name].to(dtype).clone().requires_grad_() for name in used}
    out = fn(**leaves, **kwargs)
    out.backward(grad_out.to(dtype))
    return out.detach().double(), {name: leaves[name].grad.double() for name in used}


def assert_close(actual, expected, what, tol=1e-4):
    # gradients of A, D and delta_bias sum over batch and L; compare them relative to their size
    scale = max(1.0, expected.abs().max().item())
    error = (actual - expected).abs().max().item()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    assert error <= tol * scale, f"{what}: max abs error {error:.3g} (scale {scale:.3g})"


def huge_step_inputs(seq_len, groups, huge_positions, wide_A=False):
    """Steps of 0.01 and, at a few positions, 1e5 (delta_softplus=False): a state reset amid slow decay.

    With ``wide_A`` some |A| are ~1e-6, so even the huge steps decay the state only partly.
    """
    inputs = make_inputs(2, 8, 4, seq_len, groups, softplus=False)
    inputs["delta"] = torch.full((2, 8, seq_len), 0.01)
    inputs["delta"][..., huge_positions] = 1e5
    if wide_A:
        inputs["A"] = -torch.exp(torch.empty(8, 4).uniform_(-14, 1, generator=torch.Generator().manual_seed(5)))
    return inputs


# --- VMamba v0 checkpoints ---------------------------------------------------------------------------

EMBED_DIM = 16
D_STATE = 16
CHECKPOINT_DEPTHS = (2, 2, 3, 2)  # stage 3 deeper than the network's 2 blocks, like VMamba-S's 27


def synthetic_vmamba_v0(embed_dim=EMBED_DIM, depths=CHECKPOINT_DEPTHS, d_state=D_STATE, seed=0) -> dict:
    """Random tensors with VMamba v0's key names and shapes (classifier with 10 classes to stay small)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return 0.3 * torch.randn(*shape, generator=g)

    state = {
        "patch_embed.proj.weight": rand(embed_dim, 3, 4, 4),
        "patch_embed.proj.bias": rand(embed_dim),
        "patch_embed.norm.weight": 1 + rand(embed_dim),
        "patch_embed.norm.bias": rand(embed_dim),
    }
    for level, depth in enumerate(depths):
        dim = embed_dim * 2**level
        inner, rank = 2 * dim, math.ceil(dim / 16)
        for block in range(depth):
            p = f"layers.{level}.blocks.{block}."
            state |= {
                p + "ln_1.weight": 1 + rand(dim),
                p + "ln_1.bias": rand(dim),
                p + "self_attention.in_proj.weight": rand(2 * inner, dim),
                p + "self_attention.conv2d.weight": rand(inner, 1, 3, 3),
                p + "self_attention.conv2d.bias": rand(inner),
                p + "self_attention.x_proj_weight": rand(4, rank + 2 * d_state, inner),
                p + "self_attention.dt_projs_weight": rand(4, inner, rank),
                p + "self_attention.dt_projs_bias": rand(4, inner) - 3,
                p + "self_attention.A_logs": torch.log(torch.arange(1.0, d_state + 1)).repeat(4 * inner, 1)
                + rand(4 * inner, d_state),
                p + "self_attention.Ds": 1 + rand(4 * inner),
                p + "self_attention.out_norm.weight": 1 + rand(inner),
                p + "self_attention.out_norm.bias": rand(inner),
                p + "self_attention.out_proj.weight": rand(dim, inner),
            }
        if level < len(depths) - 1:
            state |= {
                f"layers.{level}.downsample.norm.weight": 1 + rand(4 * dim),
                f"layers.{level}.downsample.norm.bias": rand(4 * dim),
                f"layers.{level}.downsample.reduction.weight": rand(2 * dim, 4 * dim),
            }
    top = embed_dim * 2 ** (len(depths) - 1)
    state |= {"norm.weight": rand(top), "norm.bias": rand(top), "head.weight": rand(10, top), "head.bias": rand(10)}
    return state


def block_weights(state: dict, level: int, block: int) -> dict:
    prefix = f"layers.{level}.blocks.{block}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def reference_v0_block(w: dict, x: torch.Tensor) -> torch.Tensor:
    """VMamba v0's VSS block on channels-last ``x`` (B, H, W, C), with a step-by-step selective scan."""
    batch, height, width, dim = x.shape
    length = height * width
    h = F.layer_norm(x, (dim,), w["ln_1.weight"], w["ln_1.bias"])
    u, z = (h @ w["self_attention.in_proj.weight"].T).chunk(2, dim=-1)
    inner = u.shape[-1]
    u = F.silu(F.conv2d(u.permute(0, 3, 1, 2), w["self_attention.conv2d.weight"], w["self_attention.conv2d.bias"],
                        padding=1, groups=inner))
    rows = u.reshape(batch, inner, length)
    columns = u.transpose(2, 3).reshape(batch, inner, length)
    xs = torch.stack([rows, columns, rows.flip(-1), columns.flip(-1)], dim=1)  # (B, 4, E, L)
    projected = torch.einsum("bkel,kce->bkcl", xs, w["self_attention.x_proj_weight"])
    rank = w["self_attention.dt_projs_weight"].shape[-1]
    dts, Bs, Cs = torch.split(projected, [rank, D_STATE, D_STATE], dim=2)
    dts = torch.einsum("bkrl,ker->bkel", dts, w["self_attention.dt_projs_weight"])
    dts = F.softplus(dts + w["self_attention.dt_projs_bias"][None, :, :, None])
    A = -torch.exp(w["self_attention.A_logs"]).reshape(4, inner, D_STATE)
    D = w["self_attention.Ds"].reshape(4, inner)
    ys = torch.zeros_like(xs)
    for k in range(4):
        state = torch.zeros(batch, inner, D_STATE, dtype=x.dtype)
        for t in range(length):
            delta = dts[:, k, :, t, None]
            state = torch.exp(delta * A[k]) * state + delta * Bs[:, k, None, :, t] * xs[:, k, :, t, None]
            ys[:, k, :, t] = (state * Cs[:, k, None, :, t]).sum(-1) + D[k] * xs[:, k, :, t]
    along_columns = (ys[:, 1] + ys[:, 3].flip(-1)).reshape(batch, inner, width, height).transpose(2, 3)
    y = ys[:, 0] + ys[:, 2].flip(-1) + along_columns.reshape(batch, inner, length)
    y = y.transpose(1, 2).reshape(batch, height, width, inner)
    y = F.layer_norm(y, (inner,), w["self_attention.out_norm.weight"], w["self_attention.out_norm.bias"]) * F.silu(z)
    return x + y @ w["self_attention.out_proj.weight"].T


def reference_v0_merge(state: dict, level: int, x: torch.Tensor) -> torch.Tensor:
    merged = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
    p = f"layers.{level}.downsample."
    merged = F.layer_norm(merged, merged.shape[-1:], state[p + "norm.weight"], state[p + "norm.bias"])
    return merged @ state[p + "reduction.weight"].T


# --- dataset converters -------------------------------------------------------------------------------

SPACING_XYZ = (0.8, 0.8, 3.0)


def write_nifti(path: Path, array: np.ndarray, spacing_xyz=SPACING_XYZ, origin=(0.0, 0.0, 0.0), direction=None) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


def ct_volume(rng, shape=(6, 12, 12)) -> np.ndarray:
    return rng.integers(-200, 200, shape).astype(np.int16)


def label_volume(num_labels: int, shape=(6, 12, 12)) -> np.ndarray:
    """Every label value 0..num_labels present, so a remapping is visible for each one."""
    labels = np.zeros(shape, np.uint8)
    labels.reshape(-1)[: num_labels + 1] = np.arange(num_labels + 1)
    return labels


def assert_nothing_written(out_root: Path) -> None:
    assert not out_root.exists() or list(out_root.iterdir()) == []


OFFICIAL_AMOS_LABELS = ["background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver",
                        "stomach", "arota", "postcava", "pancreas", "right adrenal gland", "left adrenal gland",
                        "duodenum", "bladder", "prostate/uterus"]


X_FLIPPED = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def write_rgb(path: Path, size=(20, 16), fmt=None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def write_mask(path: Path, size=(20, 16), value=255) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[4:10, 5:15] = value
    Image.fromarray(mask).save(path)


def make_isic_part(root: Path, images: str, masks: str | None, ids, superpixels=False) -> None:
    for case in ids:
        write_rgb(root / images / f"ISIC_{case:07d}.jpg", fmt="JPEG")
        if superpixels:
            write_rgb(root / images / f"ISIC_{case:07d}_superpixels.png")
        if masks:
            write_mask(root / masks / f"ISIC_{case:07d}_segmentation.png")


def run_convert(argv) -> int:
    from nnunet_mamba.commands import convert as convert_command

    parser = argparse.ArgumentParser()
    convert_command.register(parser.add_subparsers())
    args = parser.parse_args(["convert", *argv])
    return args.func(args)


# --- the evaluate command -----------------------------------------------------------------------------

def run_evaluate(argv):
    from nnunet_mamba.commands import evaluate

    parser = argparse.ArgumentParser()
    evaluate.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)
