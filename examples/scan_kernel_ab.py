"""A change to the numba scan's kernels, timed against the kernels as they are, in turns in one process.

Copy ``nnunet_mamba/ops/numba_kernels.py`` somewhere, change the copy, and run

    python examples/scan_kernel_ab.py --other /tmp/numba_kernels_changed.py
    python examples/scan_kernel_ab.py --other /tmp/numba_kernels_changed.py --network light_m_unet --patch 128 128

Both modules run through the package's own autograd Function (``selective_scan(..., backend="numba")``): each
round times the inference call and the train call (forward and backward) once with each module, alternating, so
that a shared or throttled machine slows both alike. Changes of 5 % drown in this machine's noise when the two
versions run in separate processes or one after the other; the median of the per-round ratios does not. The outputs
of the two modules are compared too (largest difference relative to the largest value). With ``--network``, a
network's train step (forward, backward, AdamW step) and inference take the place of the lone scan calls (batch 2
in 2D, 1 in 3D, freed memory kept as in our trainers on CPU; ``benchmark network``'s steps).

The copy compiles on its first call (about a minute for both dtypes' forward and backward).
"""
import argparse
import importlib.util
import statistics
import sys
import time

import torch

from nnunet_mamba.architectures import build_network, synthetic_configuration
from nnunet_mamba.benchmarks.network import TimedModel
from nnunet_mamba.benchmarks.scan import make_inputs
from nnunet_mamba.cpu_allocator import keep_freed_memory
from nnunet_mamba.ops import scan_numba, selective_scan

SHAPES = ((2, 128, 4096), (2, 64, 16384), (2, 256, 1024))  # (batch, channels, length), 16 states


def load_module(path: str):
    name = "numba_kernels_other"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's disk cache finds the module of its cached kernels by name
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", required=True, help="path of the changed copy of numba_kernels.py")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--network", help="time this registered network instead of lone scan calls")
    parser.add_argument("--patch", type=int, nargs="+", default=[128, 128])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modules = {"as they are": scan_numba.kernels_import.result()[0], "other": load_module(args.other)}
    original = scan_numba._get_kernels

    def with_kernels(module, call):
        scan_numba._get_kernels = lambda: module
        try:
            return call()
        finally:
            scan_numba._get_kernels = original

    def scan_call(inputs, grad):
        out = selective_scan(**inputs, delta_softplus=True, backend="numba")
        if grad is not None:
            out.backward(grad)
        return out.detach()

    if args.network:
        keep_freed_memory()
        patch = tuple(args.patch)
        network = build_network(args.network, synthetic_configuration(patch), 1, 3, False)
        timed = TimedModel(network, "numba", patch, 2 if len(patch) == 2 else 1, 1, 3, "cpu", amp=False)
        label = f"{args.network} {'x'.join(map(str, patch))}"
        # the outputs compared are the inference's (before any train step has moved the weights)
        cases = [(f"{label} inference", False, timed.inference), (f"{label} train step", True, timed.train_step)]
    else:
        cases = []
        for shape in SHAPES:
            for mode in ("inference", "train"):
                batch, channels, length = shape
                inputs = {name: t.requires_grad_(mode == "train") for name, t in
                          make_inputs(batch, channels, args.d_state, 1, length, "cpu").items()}
                grad = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) if mode == "train" else None)
                cases.append((f"{shape} {mode}", mode == "train",
                              lambda inputs=inputs, grad=grad: scan_call(inputs, grad)))

    print(f"{args.threads} threads, N = {args.d_state}, medians of {args.rounds} rounds; ratio: time as they are / "
          f"time of the other (above 1: the other is faster)")
    for label, train, call in cases:
        with torch.set_grad_enabled(train):
            outputs = [with_kernels(module, call) for module in modules.values()]  # compiles the copy
            times = {name: [] for name in modules}
            for _ in range(args.rounds):
                for name, module in modules.items():
                    start = time.perf_counter()
                    with_kernels(module, call)
                    times[name].append(time.perf_counter() - start)
        first, second = (times[name] for name in modules)
        ratio = statistics.median(a / b for a, b in zip(first, second))
        compared = ""
        if outputs[0] is not None:
            difference = ((outputs[0] - outputs[1]).abs().max() / outputs[0].abs().max()).item()
            compared = f"; outputs differ by {difference:.1e}"
        print(f"{label}: {statistics.median(first) * 1e3:.2f} ms as they are, {statistics.median(second) * 1e3:.2f} ms "
              f"other, ratio {ratio:.3f}{compared}")


if __name__ == "__main__":
    main()
