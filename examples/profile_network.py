"""Where a network's train step or inference spends its time on CPU: the torch profiler over one AdamW step (or
one ``no_grad`` forward pass) after two warm-ups, with the forward scopes of the Mamba block's causal
convolution and of every selective-scan call named (the numba kernels are no torch ops: without the scope an
inference profile would not show them).

    python examples/profile_network.py --network light_m_unet --patch 128 128 --batch 2 --mode train
    python examples/profile_network.py --network light_m_unet --patch 128 128 --batch 2 --mode inference

Prints the wall time of the profiled call, the ops by self time, the scopes' totals, and the state updates of the
selective scans (batch x channels x positions x N summed over the calls) with the rate the scans ran at.
"""
import argparse
import time

import torch
from torch.autograd.profiler import record_function

import nnunet_mamba.blocks.mamba as mamba_module
import nnunet_mamba.blocks.vss as vss_module
from nnunet_mamba.architectures import build_network, synthetic_configuration
from nnunet_mamba.cpu_allocator import keep_freed_memory

SCOPES = ("causal_conv1d", "selective_scan")


def named_scope(name, function, on_call=None):
    def scoped(*args, **kwargs):
        if on_call is not None:
            on_call(*args, **kwargs)
        with record_function(name):
            return function(*args, **kwargs)
    return scoped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="light_m_unet")
    parser.add_argument("--patch", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--mode", choices=("train", "inference"), default="train")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=14)
    parser.add_argument("--shapes", action="store_true", help="one row per op and input shapes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as benchmark network and our trainers on CPU
    # the blocks look both up in their modules at call time
    mamba_module.causal_conv1d_silu = named_scope("causal_conv1d", mamba_module.causal_conv1d_silu)
    state_updates = []

    def count_updates(u, delta, A, *rest, **options):
        state_updates.append(u.numel() * A.shape[-1])

    for module in (mamba_module, vss_module):
        module.selective_scan = named_scope("selective_scan", module.selective_scan, count_updates)

    torch.manual_seed(0)
    network = build_network(args.network, synthetic_configuration(tuple(args.patch)), 1, 3, False)
    optimizer = torch.optim.AdamW(network.parameters())
    images = torch.randn(args.batch, 1, *args.patch)
    labels = torch.randint(0, 3, (args.batch, *args.patch))

    def train_step():
        network.train()
        loss = torch.nn.functional.cross_entropy(network(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def inference():
        network.eval()
        with torch.no_grad():
            network(images)

    call = train_step if args.mode == "train" else inference
    for _ in range(2):
        call()
    state_updates.clear()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=args.shapes) as profile:
        started = time.perf_counter()
        call()
        seconds = time.perf_counter() - started
    events = profile.key_averages(group_by_input_shape=args.shapes)
    print(f"{args.network} {'x'.join(map(str, args.patch))} batch {args.batch}, {args.mode}: {seconds * 1000:.0f} ms")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    for scope in SCOPES:
        for event in events:
            if event.key == scope:
                print(f"{scope}: forward {event.cpu_time_total / 1000:.1f} ms (with what it calls)")
                if scope == "selective_scan":
                    updates = sum(state_updates)
                    print(f"selective_scan: {len(state_updates)} calls, {updates / 1e6:.1f} M state updates, "
                          f"{updates / event.cpu_time_total / 1e3:.2f} G updates/s in the forward")


if __name__ == "__main__":
    main()
