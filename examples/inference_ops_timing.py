"""PyTorch's CPU ops against the paths nnunet_mamba takes in CPU inference (no gradient recorded), on LightM-UNet's
maps, in turns in one process, medians of 9 calls:

* ``pool``: max-pooling against the strided views (``blocks/pooling.py``);
* ``product``: the channel product ``W @ x`` of a channels-first map, as PyTorch's ``bmm``,
  oneDNN's 1-wide convolution, and the numba kernel where it applies (``ops.block_ops.channels_linear``: few input
  channels, or long sequences);
* ``upsample``: trilinear (bilinear) up-sampling plus the skip against the one-pass kernel
  (``ops.linear_upsample_add``).

    python examples/inference_ops_timing.py [--op pool product upsample]
    NNUNET_MAMBA_KEEP_FREED_MEMORY=0 python examples/inference_ops_timing.py --op product   # glibc's defaults
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from nnunet_mamba.blocks.pooling import max_pool
from nnunet_mamba.cpu_allocator import keep_freed_memory
from nnunet_mamba.ops import linear_upsample_add
from nnunet_mamba.ops.block_ops import channels_linear, channels_linear_applies

# (map shape, stride): LightM-UNet's first pooling in 2D (128 x 128, batch 2) and 3D (64^3), a deeper 3D one, and an
# anisotropic plan's in-plane-only pooling
POOLINGS = (((2, 64, 128, 128), (2, 2)), ((1, 64, 64, 64, 64), (2, 2, 2)), ((1, 128, 32, 32, 32), (2, 2, 2)),
            ((1, 32, 32, 64, 64), (1, 2, 2)))
# (batch, out, in, L): the Mamba block's products at LightM-UNet's 3D 64^3 levels (x and z, out_proj, x_proj, dt_proj),
# at its 2D 128 x 128 first level, and at the first level of nnUNetv2_predict's 64 x 128 x 128 patch
PRODUCTS = ((1, 64, 32, 262144), (1, 32, 64, 262144), (1, 34, 64, 262144), (1, 64, 2, 262144), (1, 128, 64, 32768),
            (1, 128, 4, 32768), (2, 64, 32, 16384), (2, 32, 64, 16384), (2, 64, 2, 16384), (1, 64, 32, 2 ** 20),
            (1, 64, 2, 2 ** 20))
# (low-resolution map, scale factors): LightM-UNet's decoder steps in 3D and 2D
UPSAMPLINGS = (((1, 32, 32, 32, 32), (2.0, 2.0, 2.0)), ((1, 64, 16, 16, 16), (2.0, 2.0, 2.0)),
               ((2, 32, 64, 64), (2.0, 2.0)))


def _medians(calls: dict) -> dict:
    times = {name: [] for name in calls}
    for _ in range(9):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def _report(label: str, medians: dict) -> None:
    baseline = next(iter(medians.values()))
    print(f"{label}: " + ", ".join(f"{name} {ms:.2f} ms ({ms / baseline:.2f})" for name, ms in medians.items()))


def pool() -> None:
    for shape, stride in POOLINGS:
        x = torch.randn(shape)
        pytorch = F.max_pool2d if x.dim() == 4 else F.max_pool3d
        assert torch.equal(pytorch(x, stride, stride), max_pool(x, stride))
        _report(f"max-pool {shape} stride {stride}", _medians({"PyTorch": lambda: pytorch(x, stride, stride),
                                                               "strided views": lambda: max_pool(x, stride)}))


def product() -> None:
    for batch, rows, inputs, length in PRODUCTS:
        x, weight = torch.randn(batch, inputs, length), torch.randn(rows, inputs)
        calls = {"bmm": lambda: torch.bmm(weight.expand(batch, -1, -1), x),
                 "1-wide convolution": lambda: F.conv1d(x, weight.unsqueeze(-1))}
        if channels_linear_applies(x, weight, None):
            calls["numba kernel"] = lambda: channels_linear(x, weight, None)
        expected = calls["bmm"]()
        for call in calls.values():
            torch.testing.assert_close(call(), expected, rtol=1e-4, atol=1e-4)
        _report(f"product ({rows} x {inputs}) @ ({batch}, {inputs}, {length})", _medians(calls))


def upsample() -> None:
    for shape, factors in UPSAMPLINGS:
        x = torch.randn(shape)
        skip = torch.randn(*shape[:2], *(int(size * f) for size, f in zip(shape[2:], factors)))
        mode = "bilinear" if x.dim() == 4 else "trilinear"
        calls = {"PyTorch": lambda: F.interpolate(x, scale_factor=factors, mode=mode, align_corners=False) + skip,
                 "one pass": lambda: linear_upsample_add(x, skip, factors)}
        torch.testing.assert_close(calls["one pass"](), calls["PyTorch"](), rtol=1e-5, atol=1e-5)
        _report(f"{mode} x {factors} of {shape} + skip", _medians(calls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--op", nargs="+", choices=("pool", "product", "upsample"),
                        default=["pool", "product", "upsample"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"freed memory kept: {keep_freed_memory()}")  # as benchmark network and our trainers on CPU
    with torch.no_grad():
        for op in args.op:
            globals()[op]()


if __name__ == "__main__":
    main()
