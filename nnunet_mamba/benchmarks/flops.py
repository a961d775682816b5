"""FLOPs and MACs of one forward pass, with the selective scan counted analytically.

What is counted
---------------
* Convolutions and matrix products, by ``torch.utils.flop_counter.FlopCounterMode`` from the shapes of
  the aten ops that actually run: ``convolution`` (any dimensionality, grouped and depthwise included,
  bias adds not counted) and ``mm``/``addmm``/``bmm``/``baddbmm`` (``nn.Linear``, ``F.linear``,
  ``torch.einsum``/``matmul`` lowered to them; bias adds not counted), plus scaled-dot-product
  attention should a network use it. The products are split by where they run: inside an
  ``nn.Linear`` module ("linear") or elsewhere ("einsum/matmul": the projections our Mamba and VSS blocks apply
  with their weights, such as the VSS blocks' per-direction x_proj and dt_proj).
* The selective scan, once per call of :func:`nnunet_mamba.ops.selective_scan.selective_scan`, with
  VMamba's analytic estimate (``flops_selective_scan_fn`` in MzeroMiko/VMamba,
  classification/models/vmamba.py, which cites state-spaces/mamba issue #110): for u of shape
  (B, D, L) and state size N, ``9 * B * L * D * N`` multiply-accumulates, plus ``B * D * L`` for the D
  skip term when D is given and ``B * D * L`` for the z gate when z is given. The formula treats the
  delta bias, softplus, exp and SiLU as free. The ops the scan backend runs internally (the pure-PyTorch
  scan's matmuls, the CUDA kernel) are *not* counted on top: they are discarded from FlopCounterMode's
  tally while the scan runs, so the scan is counted exactly once, the same way on every backend.

What is not counted
-------------------
FlopCounterMode has no formula for elementwise work, so none of it is in the totals: additions of
residuals and skips, the gating multiplication, bias adds, normalisation (LayerNorm), activations
(SiLU, softplus, exp), padding, the cross-scan/merge permutes, flips and sums, and any data movement.
A product whose contracted axis has length 1 is not counted if torch runs it as a broadcast multiply (an einsum
does; the blocks' batched products do not).
Only the forward pass runs (under ``torch.no_grad()``), once, in the module's current train/eval mode.

The papers' own counters
------------------------
:func:`count_thop` (``thop.profile``, LightM-UNet's figures) and :func:`count_fvcore` (fvcore's
``FlopCountAnalysis``, Swin-UMamba's figures) run the real packages (extra ``.[paper-counts]``) and report what
they report, next to the true parameter count and the scan they leave out (``nnunet-mamba benchmark flops
--protocol thop|fvcore``). Neither is a count of the work done: they show how a published figure came about.

Conventions
-----------
``total_flops`` counts a multiply and an add separately (FlopCounterMode's convention: an (m, k) x
(k, n) product is ``2 * m * n * k``). ``total_macs`` counts multiply-accumulates, the convention of
fvcore and thop, which VMamba, VM-UNet and DSVM-UNet print as "FLOPs (G)". Every formula FlopCounterMode
applies counts two FLOPs per multiply-accumulate, so MACs are its FLOPs halved; the scan's MACs are
doubled for its FLOPs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunet_mamba.blocks.channels_first import ChannelsFirstLinear
from nnunet_mamba.blocks.convolutions import CONVOLUTION_CLASSES
from nnunet_mamba.blocks.layer_norm import ChannelsFirstLayerNorm
from nnunet_mamba.blocks.upsampling import LinearUpsample
from nnunet_mamba.ops.selective_scan import ScanCall, observe_scan_calls, scan_backend_override

CONVOLUTION = "convolution"
LINEAR = "linear"
MATMUL = "einsum/matmul"
SELECTIVE_SCAN = "selective_scan"
OTHER = "other"
CATEGORIES = (CONVOLUTION, LINEAR, MATMUL, SELECTIVE_SCAN, OTHER)

_aten = torch.ops.aten
_CONVOLUTION_OPS = {_aten.convolution, _aten._convolution, _aten.cudnn_convolution,
                    _aten.convolution_overrideable, _aten._slow_conv2d_forward, _aten.convolution_backward}
_MATMUL_OPS = {_aten.mm, _aten.addmm, _aten.bmm, _aten.baddbmm, _aten._scaled_mm}


def selective_scan_macs(batch: int, dim: int, length: int, d_state: int, has_D: bool = True,
                        has_z: bool = False) -> int:
    """VMamba's analytic multiply-accumulate count of one selective scan (see the module docstring)."""
    macs = 9 * batch * length * dim * d_state
    if has_D:
        macs += batch * dim * length
    if has_z:
        macs += batch * dim * length
    return macs


@dataclass
class FlopReport:
    """FLOPs and MACs of one forward pass, in total and per category (:data:`CATEGORIES`)."""

    flops_by_category: Dict[str, int]
    macs_by_category: Dict[str, int]
    parameters: int
    scan_calls: List[ScanCall] = field(default_factory=list)

    @property
    def total_flops(self) -> int:
        return sum(self.flops_by_category.values())

    @property
    def total_macs(self) -> int:
        return sum(self.macs_by_category.values())

    @property
    def gflops(self) -> float:
        return self.total_flops / 1e9

    @property
    def gmacs(self) -> float:
        return self.total_macs / 1e9


@contextlib.contextmanager
def _discard_counts(counter: FlopCounterMode) -> Iterator[None]:
    """Leave ``counter``'s tally as it was on entry, whatever ran inside."""
    # Restoring a snapshot keeps the dispatch mode stack untouched, so this is also safe when other
    # modes (fake tensors, tracing) sit above or below the counter.
    before = counter.get_flop_counts()
    try:
        yield
    finally:
        counter.flop_counts.clear()
        for module_name, per_op in before.items():
            counter.flop_counts[module_name].update(per_op)


@contextlib.contextmanager
def _tally_inside(modules: List[nn.Module], counter: FlopCounterMode, tally: List[int]) -> Iterator[None]:
    """Add to ``tally[0]`` the FLOPs the counter records while any of ``modules`` runs its forward."""
    started: List[int] = []

    def before(module, args):
        started.append(counter.get_total_flops())

    def after(module, args, output):
        tally[0] += counter.get_total_flops() - started.pop()

    handles = []
    try:
        for module in modules:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        yield
    finally:
        for handle in handles:
            handle.remove()


def count_flops(module: nn.Module, *inputs, **kwargs) -> FlopReport:
    """Run ``module(*inputs, **kwargs)`` once without gradients and count its FLOPs and MACs."""
    scan_calls: List[ScanCall] = []
    inside_linear = [0]
    counter = FlopCounterMode(display=False)

    def on_scan(call: ScanCall):
        scan_calls.append(call)
        return _discard_counts(counter)

    linear_modules = [m for m in module.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad(), counter, observe_scan_calls(on_scan), _tally_inside(linear_modules, counter, inside_linear):
        module(*inputs, **kwargs)

    by_op = counter.get_flop_counts().get("Global", {})
    flops = dict.fromkeys(CATEGORIES, 0)
    for op, count in by_op.items():
        if op in _CONVOLUTION_OPS:
            flops[CONVOLUTION] += count
        elif op in _MATMUL_OPS:
            flops[MATMUL] += count
        else:
            flops[OTHER] += count
    flops[LINEAR] = inside_linear[0]
    flops[MATMUL] -= inside_linear[0]
    macs = {category: count // 2 for category, count in flops.items()}
    macs[SELECTIVE_SCAN] = sum(selective_scan_macs(c.batch, c.dim, c.length, c.d_state, c.has_D, c.has_z)
                               for c in scan_calls)
    flops[SELECTIVE_SCAN] = 2 * macs[SELECTIVE_SCAN]
    parameters = sum(p.numel() for p in module.parameters())
    return FlopReport(flops_by_category=flops, macs_by_category=macs, parameters=parameters,
                      scan_calls=scan_calls)


def format_flops_table(reports: Mapping[str, FlopReport]) -> str:
    """A markdown table, one column block per named report: G MACs and G FLOPs per category and in total."""
    names = list(reports)
    header = "| category | " + " | ".join(f"{name} GMACs | {name} GFLOPs" for name in names) + " |"
    lines = [header, "|---|" + "---|---|" * len(names)]
    for category in CATEGORIES:
        cells = [f"{r.macs_by_category[category] / 1e9:.3f} | {r.flops_by_category[category] / 1e9:.3f}"
                 for r in (reports[n] for n in names)]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    totals = [f"**{reports[n].gmacs:.3f}** | **{reports[n].gflops:.3f}**" for n in names]
    lines.append("| **total** | " + " | ".join(totals) + " |")
    return "\n".join(lines)


# --- the papers' own counters ------------------------------------------------------------------------------------

#: ``ours``: :func:`count_flops`; ``thop``: ``thop.profile`` (LightM-UNet's figures); ``fvcore``:
#: ``fvcore.nn.FlopCountAnalysis(...).total()`` (Swin-UMamba's figures)
PROTOCOLS = ("ours", "thop", "fvcore")
PAPER_COUNTS_HINT = 'install the counters the papers used with: pip install -e ".[paper-counts]"'


@dataclass
class ProtocolCount:
    """What a paper's counter reports for one forward pass, next to the truth.

    ``parameters`` and ``macs`` are the counter's own figures; ``true_parameters`` is ``sum(p.numel())``.
    ``scan_macs`` is our analytic count of the selective scans that ran (VMamba's formula, see
    :func:`selective_scan_macs`): what a counter that cannot see the scan leaves out.
    """

    protocol: str
    parameters: int
    macs: int
    true_parameters: int
    scan_macs: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def _scan_macs_observer(total: List[int]):
    def on_scan(call: ScanCall):
        # under the JIT tracer (fvcore) the shapes are traced values: count them as plain integers
        total[0] += int(selective_scan_macs(int(call.batch), int(call.dim), int(call.length), int(call.d_state),
                                            call.has_D, call.has_z))
    return on_scan



def count_thop(module: nn.Module, *inputs) -> ProtocolCount:
    """``thop.profile`` (thop 0.1.1), as LightM-UNet's authors counted: one forward pass of ``inputs``.

    thop sees a module's parameters and operations only through forward hooks on the layer types it knows
    (convolutions, ``nn.Linear``, ``nn.LayerNorm``, ``nn.Upsample``...) and only when that layer's forward runs:
    GroupNorm, parameters held by other modules (Mamba's ``A_log`` and ``D``, LightM-UNet's ``s``) and layers whose
    weights are used directly (the Mamba block's projections, as in mamba-ssm's fused path) count zero; the selective
    scan and trilinear interpolation count zero ops. Its ops are multiply-accumulates, proportional to the batch.
    """
    try:
        import thop
    except ImportError as error:
        raise ImportError(f"the thop protocol needs the thop package: {PAPER_COUNTS_HINT}") from error
    from thop.vision.basic_hooks import count_convNd, count_linear, count_normalization, count_upsample

    scan = [0]
    with torch.no_grad(), observe_scan_calls(_scan_macs_observer(scan)):
        # our channels-first Linear and LayerNorm, up-sampling and convolution subclasses are the nn.Linear,
        # nn.LayerNorm, nn.Upsample and convolutions of the published layers, which thop counted
        custom_ops = {ChannelsFirstLinear: count_linear, ChannelsFirstLayerNorm: count_normalization,
                      LinearUpsample: count_upsample,
                      **{convolution: count_convNd for convolution in CONVOLUTION_CLASSES}}
        macs, parameters = thop.profile(module, inputs=inputs, verbose=False, custom_ops=custom_ops)
    return ProtocolCount("thop", int(parameters), int(macs), sum(p.numel() for p in module.parameters()), scan[0])


def count_fvcore(module: nn.Module, *inputs) -> ProtocolCount:
    """``fvcore.nn.FlopCountAnalysis(module, inputs).total()``, as Swin-UMamba's authors counted.

    fvcore traces the forward pass with the JIT and counts multiply-accumulates of the ops it has handles for
    (convolutions, matmuls/linear/einsum, norms, upsampling); it skips what it has no handle for, which includes
    the selective scan (a custom autograd function). ``scan_macs`` is that scan, counted our way; papers that
    register VMamba's scan handle with fvcore report ``macs + scan_macs``. Parameters: fvcore's
    ``parameter_count``.
    """
    try:
        from fvcore.nn import FlopCountAnalysis, parameter_count
    except ImportError as error:
        raise ImportError(f"the fvcore protocol needs the fvcore package: {PAPER_COUNTS_HINT}") from error
    scan = [0]
    # the JIT tracer hands the compiled CPU kernel tensors where it expects plain numbers: trace the PyTorch scan
    with torch.no_grad(), observe_scan_calls(_scan_macs_observer(scan)), scan_backend_override("torch"):
        analysis = FlopCountAnalysis(module, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        macs = int(analysis.total())
    return ProtocolCount("fvcore", int(parameter_count(module)[""]), macs,
                         sum(p.numel() for p in module.parameters()), scan[0])
