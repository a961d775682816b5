"""How long one selective-scan call of a network takes inside its forward pass and alone, on the very inputs
captured from it: alone (after the first forward pass, and after six), right after a torch product (threads), and after
a large allocation (caches, the allocator).

    python examples/scan_in_network.py --network light_m_unet --patch 128 128 --batch 2

The call timed is the network's longest scan (its first level). Medians; inference (``no_grad``), 2 threads by
default.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import nnunet_mamba.blocks.mamba as mamba_module
import nnunet_mamba.blocks.vss as vss_module
from nnunet_mamba.architectures import build_network, synthetic_configuration


def median_ms(call, before=None, repeats: int = 9) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="light_m_unet")
    parser.add_argument("--patch", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    calls = []  # (seconds, args, kwargs) of every scan call of the forward passes
    for module in (mamba_module, vss_module):
        scan = module.selective_scan

        def timed(*scan_args, _scan=scan, **scan_kwargs):
            started = time.perf_counter()
            out = _scan(*scan_args, **scan_kwargs)
            calls.append((time.perf_counter() - started, scan_args, scan_kwargs))
            return out

        module.selective_scan = timed
    scan = mamba_module.selective_scan.__kwdefaults__["_scan"]

    torch.manual_seed(0)
    network = build_network(args.network, synthetic_configuration(tuple(args.patch)), 1, 3, False).eval()
    images = torch.randn(args.batch, 1, *args.patch)
    with torch.no_grad():
        network(images)
        _, scan_args, scan_kwargs = max(calls, key=lambda call: call[1][0].numel())
        run = lambda: scan(*scan_args, **scan_kwargs)  # noqa: E731
        after_one_pass = median_ms(run)
        in_network = []
        for _ in range(5):
            calls.clear()
            network(images)
            in_network.append(max(calls, key=lambda call: call[1][0].numel())[0])
        product = (torch.randn(2, 128, 64), torch.randn(2, 64, scan_args[0].shape[-1]))
        print(f"{args.network}, scan call of shape {tuple(scan_args[0].shape)} (median ms):")
        print(f"  in the network's forward pass        {statistics.median(in_network) * 1000:7.2f}")
        print(f"  alone, same inputs, after one pass   {after_one_pass:7.2f}")
        print(f"  alone, same inputs, after six passes {median_ms(run):7.2f}")
        print(f"  after a torch product                {median_ms(run, lambda: torch.bmm(*product)):7.2f}")
        print(f"  after a 64 MB allocation             "
              f"{median_ms(run, lambda: torch.ones(64 << 20, dtype=torch.uint8)):7.2f}")

if __name__ == "__main__":
    main()
