"""Produce tests/data/official_reference/*.pt from the networks' official code (run once, by hand).

The official code is not part of this project: check it out into a scratch folder and pass it as
``--official-root``; the expected layout and the commits are in ``OFFICIAL`` below and in
tests/data/official_reference/README.md, which also gives the commands that create the folder.

The official files import ``mamba_ssm`` (CUDA kernels). This script puts a stand-in into ``sys.modules``
before importing them, written here and independent of nnunet_mamba: ``selective_scan_fn`` is a float64
sequential recurrence and ``Mamba`` is mamba_simple's non-fused forward with mamba-ssm's parameter names.
So the references pin the Mamba block and the scan too, not only the wiring around them.

For each network: build the official module in a narrow configuration it supports, draw every parameter
and buffer from a fixed seed (``randomise``), run its forward pass in eval mode (in float64 where the official
code allows it, see ``OFFICIAL_FLOAT64``), rename its state dict to our keys (``RULES``, checked one to one and
shape by shape), load that into ours strictly, print how far ours (float64, torch scan) lands from the official
output, and save ``{"state_dict", "input", "output", "features", "network", "kwargs",
"official_output_activation", "official_dtype", "official", "seed"}``, tensors in float32.

    python scripts/make_official_references.py --official-root /tmp/official/root
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import re
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "tests" / "data" / "official_reference"
SEED = 20261206

#: folder under --official-root -> (repository, commit, network file inside the folder)
OFFICIAL = {
    "VM-UNet": ("JCruan519/VM-UNet", "43c495bfd0cb2bd58fd0147687c60c9c624c4840", "models/vmunet"),
    "LightM-UNet": ("MrBlankness/LightM-UNet", "d2bed4a003864c8fab4e4700eea56bd3670d9b58",
                    "lightm-unet/nnunetv2/nets/LightMUNet.py"),
    "LightM-UNet-v0": ("MrBlankness/LightM-UNet", "36411aa556eaee61ba0336431348f91db0439f6a",
                       "lightm-unet/nnunetv2/nets/LightMUNet.py"),
    "Swin-UMamba": ("JiarunLiu/Swin-UMamba", "2c1f72e1975cef6621f239117efdc954237c6952", "swin_umamba/nnunetv2/nets"),
    "UltraLBM-UNet": ("LinLinLin-X/UltraLBM-UNet", "0a99c437bbc2d5a3a1b90a6ca040592f7f023411",
                      "models/UltraLBM_UNet.py"),
}


# --------------------------------------------------------------------------- the mamba_ssm stand-in

def reference_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    """mamba_ssm's selective_scan_fn contract, computed step by step in float64.

    u, delta, z: (batch, dim, length); A: (dim, state); B, C: (batch, state, length) or grouped
    (batch, groups, state, length); D, delta_bias: (dim,). Returns u's dtype.
    """
    out_dtype = u.dtype
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dim = u.shape[1]
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    B = B.repeat_interleave(dim // B.shape[1], dim=1)  # channel c reads group c // (dim / groups)
    C = C.repeat_interleave(dim // C.shape[1], dim=1)
    state = u.new_zeros(u.shape[0], dim, A.shape[1])
    outputs = []
    for t in range(u.shape[2]):
        state = torch.exp(delta[:, :, t, None] * A) * state + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        outputs.append((state * C[..., t]).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + u * D.double()[None, :, None]
    if z is not None:
        y = y * F.silu(z.double())
    y = y.to(out_dtype)
    return (y, state.to(out_dtype)) if return_last_state else y


class ReferenceMamba(nn.Module):
    """mamba_simple.Mamba's parameters and its non-fused forward (the path taken without the CUDA kernels)."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", conv_bias=True, bias=False,
                 **unused):
        super().__init__()
        self.d_inner = int(expand * d_model)
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, hidden_states):  # (batch, length, d_model)
        length = hidden_states.shape[1]
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :length])
        dt, B, C = torch.split(self.x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # the bias enters the scan as delta_bias
        # mamba_simple casts these with .float(); "at least float32" is the same there and keeps a float64 run exact
        ssm_dtype = torch.promote_types(self.A_log.dtype, torch.float32)
        y = reference_selective_scan(x, dt, -torch.exp(self.A_log.to(ssm_dtype)), B.transpose(1, 2),
                                     C.transpose(1, 2), self.D.to(ssm_dtype), z=z,
                                     delta_bias=self.dt_proj.bias.to(ssm_dtype), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


def install_mamba_stand_in() -> None:
    package = types.ModuleType("mamba_ssm")
    package.Mamba = ReferenceMamba
    ops = types.ModuleType("mamba_ssm.ops")
    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = interface.selective_scan_ref = reference_selective_scan
    package.ops, ops.selective_scan_interface = ops, interface
    sys.modules.update({"mamba_ssm": package, "mamba_ssm.ops": ops,
                        "mamba_ssm.ops.selective_scan_interface": interface})


# --------------------------------------------------------------------------- loading the official files

def load_official(root: Path, folder: str, module: str | None = None):
    """Import an official network file (or a module of an official package folder) under a private name."""
    repository, commit, path = OFFICIAL[folder]
    location = root / folder / path
    if not location.exists():
        sys.exit(f"--official-root: {location} is missing (check out {repository} at {commit[:7]} into "
                 f"{root / folder}; see tests/data/official_reference/README.md)")
    private = "official_" + re.sub(r"\W", "_", folder)
    if location.is_dir():  # a folder of modules that import each other relatively (none has an __init__.py)
        package = types.ModuleType(private)
        package.__path__ = [str(location)]
        sys.modules[private] = package
        return importlib.import_module(f"{private}.{module}")
    spec = importlib.util.spec_from_file_location(private, location)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[private] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def official_record(folder: str) -> dict:
    repository, commit, path = OFFICIAL[folder]
    return {"repository": repository, "commit": commit, "path": path}


# --------------------------------------------------------------------------- random weights

@torch.no_grad()
def randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Draw every parameter and float buffer from ``generator``, at scales where every branch matters.

    The networks' own initialisations leave the Mamba branches ~1e-3 of the residual path (linears of std
    0.02), unit norms, zero biases and s = k = 1, which would hide a broken scan or a swapped tensor. Here
    weights get std 1/sqrt(fan in), norm weights, D and the skip scales 1 +- 0.2, biases +- 0.2, A_log its
    log(1..N) +- 0.1, the dt biases softplus^-1 of dt in [1e-3, 0.1] (mamba's range: long memory, so the scan
    order matters) and BatchNorm statistics a spread around (0, 1).
    """
    def draw(shape):
        return torch.randn(shape, generator=generator)

    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if not tensor.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_mean":
            tensor.copy_(0.1 * draw(tensor.shape))
        elif leaf == "running_var":
            tensor.copy_(torch.exp(0.3 * draw(tensor.shape)))
        elif leaf in ("A_log", "A_logs"):
            tensor.add_(0.1 * draw(tensor.shape))
        elif name.endswith(("dt_proj.bias", "dt_projs_bias")):
            log_dt = math.log(1e-3) + torch.rand(tensor.shape, generator=generator) * (math.log(0.1) - math.log(1e-3))
            dt = torch.exp(log_dt)
            tensor.copy_(dt + torch.log(-torch.expm1(-dt)))
        elif tensor.dim() <= 1:
            tensor.copy_((0.0 if leaf == "bias" else 1.0) + 0.2 * draw(tensor.shape))
        else:
            # VMamba stacks its per-direction linears as (directions, out, in)
            fan_in = tensor.shape[-1] if leaf in ("x_proj_weight", "dt_projs_weight") else tensor[0].numel()
            tensor.copy_(draw(tensor.shape) / math.sqrt(fan_in))


# --------------------------------------------------------------------------- official keys -> ours

def vss_block_rules(official_prefix: str, our_prefix: str) -> list:
    """VMamba v0 block naming: layers.i.blocks.j.{ln_1, self_attention.conv2d, self_attention} -> our VSS stages."""
    return [(rf"^{official_prefix}\.(\d+)\.blocks\.(\d+)\.", rf"{our_prefix}.\1.\2."),
            (r"\.ln_1\.", ".norm."), (r"\.self_attention\.conv2d\.", ".ssm.depthwise_conv."),
            (r"\.self_attention\.", ".ssm.")]


def shift(offset: int, template: str):
    """A replacement that adds ``offset`` to the first captured index."""
    return lambda match: template.format(int(match[1]) + offset, *match.groups()[1:])


RULES = {
    "vm_unet": [
        (r"^vmunet\.patch_embed\.", "stem."),
        *vss_block_rules(r"vmunet\.layers", "encoder.stages"),
        (r"^vmunet\.layers\.(\d+)\.downsample\.", r"encoder.downsamples.\1."),
        *vss_block_rules(r"vmunet\.layers_up", "decoder.stages"),
        (r"^vmunet\.layers_up\.(\d+)\.upsample\.", shift(-1, "decoder.upsamples.{}.")),
        (r"^vmunet\.final_up\.", "decoder.final_expand."),
        (r"^vmunet\.final_conv\.", "decoder.seg_layers.3."),
    ],
    "light_m_unet": [
        (r"\.conv\.(weight|bias)$", r".\1"),  # MONAI's Convolution wrapper
        (r"^convInit\.", "encoder.stem."),
        (r"^down_layers\.(\d+)\.0\.0\.", shift(-1, "encoder.transitions.{}.0.")),
        (r"^down_layers\.(\d+)\.(\d+)\.", lambda m: f"encoder.stages.{m[1]}.{int(m[2]) - 1}."),
        (r"^(encoder\.stages\.\d+\.\d+)\.conv(\d)\.", r"\1.rvm\2."),
        (r"^up_layers\.(\d+)\.0\.", r"decoder.blocks.\1."),
        (r"^up_samples\.(\d+)\.0\.", r"decoder.upsamples.\1.0."),
        (r"^conv_final\.0\.", "decoder.seg_layers.0.0."),
        (r"^conv_final\.2\.(\d)\.", shift(2, "decoder.seg_layers.0.{}.")),  # HEAD: depthwise, pointwise
        (r"^conv_final\.2\.(weight|bias)$", r"decoder.seg_layers.0.2.\1"),  # v0: one 1x1 conv
    ],
    "swin_umamba": [
        (r"^stem\.0\.", "stem.conv."), (r"^stem\.1\.", "stem.norm."),
        (r"^vssm_encoder\.(patch_embed|downsamples)\.", r"encoder.\1."),
        *vss_block_rules(r"vssm_encoder\.layers", "encoder.stages"),
        (r"^encoder(\d)\.layer\.conv3\.", shift(-1, "decoder.skips.{}.skip.0.")),
        (r"^encoder(\d)\.layer\.", shift(-1, "decoder.skips.{}.")),
        (r"^decoder(\d)\.transp_conv\.conv\.", lambda m: f"decoder.ups.{6 - int(m[1])}.upsample."),
        (r"^decoder(\d)\.conv_block\.conv3\.", lambda m: f"decoder.ups.{6 - int(m[1])}.block.skip.0."),
        (r"^decoder([2-6])\.conv_block\.", lambda m: f"decoder.ups.{6 - int(m[1])}.block."),
        (r"^decoder1\.layer\.", "decoder.output_block."),
        (r"^out_layers\.(\d)\.conv\.conv\.", r"decoder.seg_layers.\1."),
    ],
    "swin_umamba_d": [
        (r"^vssm_encoder\.(patch_embed|downsamples)\.", r"encoder.\1."),
        *vss_block_rules(r"vssm_encoder\.layers", "encoder.stages"),
        *vss_block_rules(r"decoder\.stages", "decoder.stages"),
        (r"^decoder\.expand_layers\.3\.", "decoder.final_expand."),
        (r"^decoder\.expand_layers\.", "decoder.upsamples."),
        (r"^decoder\.concat_back_dim\.", "decoder.merges."),
        # the official list runs deepest first; ours highest resolution first
        (r"^decoder\.seg_layers\.(\d)\.", lambda m: f"decoder.seg_layers.{3 - int(m[1])}."),
    ],
    "ultralbm_unet": [
        (r"^k$", "decoder.skip_weight"),
        (r"^encoder(\d)\.0\.", shift(-1, "encoder.stages.{}.")),
        (r"^decoder(\d)\.0\.", shift(-1, "decoder.stages.{}.")),
        (r"\.sep_conv(\d)\.", shift(-1, ".local.{}.")), (r"\.sep_conv\.", ".local."),
        (r"\.bn_(dw|pw)\.", r".norm_\1."),
        (r"^ebn(\d)\.", shift(-1, "encoder.norms.{}.")), (r"^dbn(\d)\.", shift(-1, "decoder.norms.{}.")),
        (r"^final\.", "decoder.seg_layers.0."),
    ],
}


def our_key(official_key: str, rules: list) -> str:
    key = official_key
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def map_state_dict(official: nn.Module, ours: nn.Module, rules: list, ours_only: str | None = None) -> dict:
    """The official tensors under our keys, checked one to one and shape by shape. Our keys that alias another
    tensor (dynamic-network-architectures keeps each conv twice) get the same tensor; keys matching the regex
    ``ours_only`` (parts the official network has not) keep our seeded values."""
    target = ours.state_dict()
    mapped = {}
    for key, value in official.state_dict().items():
        new = our_key(key, rules)
        if new not in target:
            raise KeyError(f"official {key} -> {new}: not a key of ours")
        if new in mapped:
            raise KeyError(f"official {key} -> {new}: mapped twice")
        if target[new].shape != value.shape:
            raise ValueError(f"official {key} -> {new}: shape {tuple(value.shape)} vs ours {tuple(target[new].shape)}")
        mapped[new] = value.detach().to(target[new].dtype).contiguous()
    by_storage = {target[k].data_ptr(): k for k in mapped if target[k].numel()}
    for key, value in target.items():
        if key in mapped:
            continue
        if value.numel() and value.data_ptr() in by_storage:
            mapped[key] = mapped[by_storage[value.data_ptr()]]
        elif ours_only and re.match(ours_only, key):
            mapped[key] = value.detach().clone()
        else:
            raise KeyError(f"our {key} has no official counterpart")
    return {key: mapped[key] for key in target}


# --------------------------------------------------------------------------- the networks

def build_pairs(root: Path) -> dict:
    """Reference name -> (official module, our class, our kwargs, input shape, rules, ours-only regex, record)."""
    from nnunet_mamba.architectures.light_m_unet import LightMUNet
    from nnunet_mamba.architectures.swin_umamba import SwinUMamba, SwinUMambaD
    from nnunet_mamba.architectures.ultralbm_unet import UltraLBMUNet, UltraLBMUNetT
    from nnunet_mamba.architectures.vm_unet import VMUNet

    pairs = {}

    def vm_unet():
        package = load_official(root, "VM-UNet", "vmunet")
        official = package.VMUNet(input_channels=3, num_classes=2, depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1])
        # the wrapper fixes dims at 96..768; its VSSM takes them, so swap in a narrow one
        official.vmunet = sys.modules[package.__package__ + ".vmamba"].VSSM(
            in_chans=3, num_classes=2, depths=[2, 1, 1, 1], depths_decoder=[1, 1, 1, 2], dims=[8, 16, 32, 64],
            dims_decoder=[64, 32, 16, 8], d_state=4)
        kwargs = dict(input_channels=3, num_classes=2, embed_dim=8, encoder_depths=(2, 1, 1, 1),
                      decoder_depths=(1, 1, 1, 2), d_state=4)
        # our deep-supervision heads (always built, unused without deep supervision) have no official twin
        return official, VMUNet, kwargs, (2, 3, 32, 64), RULES["vm_unet"], r"decoder\.seg_layers\.[012]\.", "VM-UNet"

    def light_m_unet(folder, variant):
        def build():
            official = load_official(root, folder).LightMUNet(spatial_dims=2, init_filters=8, in_channels=3,
                                                              out_channels=2, blocks_down=[2, 1, 2], blocks_up=[1, 1])
            kwargs = dict(input_channels=3, num_classes=2, init_filters=8, blocks_down=(2, 1, 2), strides=(2, 2),
                          variant=variant)
            return official, LightMUNet, kwargs, (2, 3, 32, 48), RULES["light_m_unet"], None, folder
        return build

    def swin_umamba():
        module = load_official(root, "Swin-UMamba", "SwinUMamba")
        official = module.SwinUMamba(in_chans=3, out_chans=2, feat_size=[2, 4, 8, 16, 32], hidden_size=32,
                                     deep_supervision=True)
        # the constructor fixes its VMamba-T encoder (96..768, depths 2-2-9-2); VSSMEncoder itself takes both
        official.vssm_encoder = module.VSSMEncoder(patch_size=2, in_chans=2, depths=[1, 1, 2, 1], dims=[4, 8, 16, 32])
        kwargs = dict(input_channels=3, num_classes=2, embed_dim=4, encoder_depths=(1, 1, 2, 1), deep_supervision=True)
        return official, SwinUMamba, kwargs, (2, 3, 32, 64), RULES["swin_umamba"], None, "Swin-UMamba"

    def swin_umamba_d():
        module = load_official(root, "Swin-UMamba", "SwinUMambaD")
        official = module.SwinUMambaD(
            dict(in_chans=3, patch_size=4, depths=[1, 1, 2, 1], dims=4, drop_path_rate=0.2),
            dict(num_classes=2, deep_supervision=True, features_per_stage=[4, 8, 16, 32], drop_path_rate=0.2,
                 d_state=16))
        kwargs = dict(input_channels=3, num_classes=2, embed_dim=4, encoder_depths=(1, 1, 2, 1), deep_supervision=True)
        return official, SwinUMambaD, kwargs, (2, 3, 32, 64), RULES["swin_umamba_d"], None, "Swin-UMamba"

    def ultralbm(multiplier, our_class):
        def build():
            official = load_official(root, "UltraLBM-UNet").UltraLBM_UNet(num_classes=1, input_channels=3,
                                                                          channel_multiplier=multiplier)
            kwargs = dict(input_channels=3, num_classes=1, reverse="channel")
            return official, our_class, kwargs, (2, 3, 64, 96), RULES["ultralbm_unet"], None, "UltraLBM-UNet"
        return build

    pairs["vm_unet"] = vm_unet
    pairs["light_m_unet"] = light_m_unet("LightM-UNet", "official")
    pairs["light_m_unet_v0"] = light_m_unet("LightM-UNet-v0", "v0")
    pairs["swin_umamba"] = swin_umamba
    pairs["swin_umamba_d"] = swin_umamba_d
    pairs["ultralbm_unet"] = ultralbm(1.0, UltraLBMUNet)
    pairs["ultralbm_unet_t"] = ultralbm(0.5, UltraLBMUNetT)
    return pairs


#: references whose official forward runs in float64 (LightM-UNet and UltraLBM-UNet cast nothing to float32); the
#: SS2D of VM-UNet and Swin-UMamba casts to float32 and asserts it, so those run in float32
OFFICIAL_FLOAT64 = {"light_m_unet", "light_m_unet_v0", "ultralbm_unet", "ultralbm_unet_t"}

#: intermediate tensors stored as well, our module -> the official module whose output it must equal. VM-UNet's
#: final expanding normalises over C/4 channels (2 here), which keeps little more than a sign per pixel, so the
#: input of that expanding is compared too.
FEATURES = {"vm_unet": {"decoder.stages.3": "vmunet.layers_up.3"}}


def as_list(output) -> list[torch.Tensor]:
    return [t.detach().float().contiguous() for t in (output if isinstance(output, (list, tuple)) else [output])]


def make_reference(name: str, build, output_dir: Path) -> None:
    from nnunet_mamba.ops.selective_scan import scan_backend_override

    torch.manual_seed(SEED)
    official, our_class, kwargs, input_shape, rules, ours_only, folder = build()
    generator = torch.Generator().manual_seed(SEED)
    randomise(official, generator)
    official.eval()
    x = torch.randn(input_shape, generator=generator)
    features = {}
    for ours_path, official_path in FEATURES.get(name, {}).items():
        official.get_submodule(official_path).register_forward_hook(
            lambda module, args, output, path=ours_path: features.__setitem__(path, output.detach().contiguous()))
    official_dtype = torch.float64 if name in OFFICIAL_FLOAT64 else torch.float32
    with torch.no_grad():
        official_outputs = as_list(official.to(official_dtype)(x.to(official_dtype)))
    features = {path: tensor.float() for path, tensor in features.items()}
    official.float()

    ours = our_class(**kwargs).eval()
    randomise(ours, generator)  # only what ours_only keeps survives the mapping
    state = map_state_dict(official, ours, rules, ours_only)
    ours.load_state_dict(state, strict=True)
    with torch.no_grad(), scan_backend_override("torch"):
        our_outputs = as_list(ours.double()(x.double()))
    # the official UltraLBM-UNet ends in a sigmoid; ours returns logits
    activation = "sigmoid" if name.startswith("ultralbm") else None
    if activation == "sigmoid":
        our_outputs = [torch.sigmoid(t) for t in our_outputs]
    differences = [float((a - b).abs().max()) for a, b in zip(official_outputs, our_outputs)]
    scales = [float(t.abs().max()) for t in official_outputs]

    path = output_dir / f"{name}.pt"
    torch.save({"state_dict": state, "input": x, "output": official_outputs, "network": our_class.__name__,
                "kwargs": kwargs, "official_output_activation": activation, "features": features,
                "official_dtype": str(official_dtype).removeprefix("torch."), "official": official_record(folder),
                "seed": SEED}, path)
    print(f"{name}: {sum(v.numel() for v in official.state_dict().values())} official values, "
          f"outputs {[tuple(t.shape) for t in official_outputs]}, max |official| {max(scales):.3g}, "
          f"max |ours - official| {max(differences):.2e}, {path.stat().st_size / 1024:.0f} KiB")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-root", type=Path, required=True,
                        help="folder holding the official checkouts (layout: tests/data/official_reference/README.md)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--only", nargs="*", help="reference names to (re)make; default all")
    args = parser.parse_args(argv)
    if not args.official_root.is_dir():
        sys.exit(f"--official-root {args.official_root} is not a folder")
    sys.path.insert(0, str(REPO_ROOT))
    install_mamba_stand_in()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    pairs = build_pairs(args.official_root)
    unknown = set(args.only or ()) - set(pairs)
    if unknown:
        sys.exit(f"--only: unknown reference(s) {sorted(unknown)}; choose from {sorted(pairs)}")
    for name, build in pairs.items():
        if not args.only or name in args.only:
            make_reference(name, build, args.output_dir)


if __name__ == "__main__":
    main()
