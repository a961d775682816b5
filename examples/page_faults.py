"""How much of a CPU train step and inference pass is the kernel's: page faults and system time per call, networks
in turns in one process, with glibc keeping freed memory as our trainers do on CPU (``nnunet_mamba.cpu_allocator``)
or, with NNUNET_MAMBA_KEEP_FREED_MEMORY=0, with glibc's defaults.

    python examples/page_faults.py --patch 64 64 64 --batch 1 --network unet light_m_unet
    NNUNET_MAMBA_KEEP_FREED_MEMORY=0 python examples/page_faults.py --patch 64 64 64 --batch 1 --network unet light_m_unet
    python examples/page_faults.py --patch 64 128 128 --network unet light_m_unet --modes inference --rounds 5

Prints, per network and mode, the medians over the rounds after two: wall ms, MiB faulted in (minor faults x page
size), system and user CPU ms (both threads), and the process's resident memory: its peak, and after every round.
"""
import argparse
import os
import resource
import statistics
import time

import torch

from nnunet_mamba.architectures import build_network, synthetic_configuration
from nnunet_mamba.benchmarks.network import TimedModel, nnunet_default_unet
from nnunet_mamba.cpu_allocator import keep_freed_memory
from nnunet_mamba.resident_memory import current_rss_bytes, lifetime_peak_rss_bytes

PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", nargs="+", default=["unet", "light_m_unet"],
                        help="registered networks; 'unet' is nnU-Net's default UNet from the same plan")
    parser.add_argument("--patch", type=int, nargs="+", default=[64, 64, 64])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=("train", "inference"), default=["train", "inference"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"freed memory kept: {keep_freed_memory()}")

    configuration = synthetic_configuration(tuple(args.patch))
    torch.manual_seed(0)
    networks = {name: TimedModel(nnunet_default_unet(configuration, 1, 3) if name == "unet" else
                                 build_network(name, configuration, 1, 3, deep_supervision=False),
                                 None, args.patch, args.batch, 1, 3, "cpu", amp=False) for name in args.network}

    readings = {(name, mode): [] for name in networks for mode in args.modes}
    resident_mib = []
    for round_index in range(args.rounds):
        for name in networks:
            calls = {"train": networks[name].train_step, "inference": networks[name].inference}
            for mode in args.modes:
                call = calls[mode]
                before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                call()
                seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
                if round_index >= 2:  # the first rounds compile kernels and grow the heap
                    readings[(name, mode)].append((seconds * 1e3, (after.ru_minflt - before.ru_minflt) * PAGE_MIB,
                                                   (after.ru_stime - before.ru_stime) * 1e3,
                                                   (after.ru_utime - before.ru_utime) * 1e3))
        resident_mib.append(round(current_rss_bytes() / 2**20))
    print(f"{'network':<16} {'mode':<10} {'wall ms':>9} {'faulted MiB':>12} {'system ms':>10} {'user ms':>9}")
    for (name, mode), values in readings.items():
        wall, faulted, system, user = (statistics.median(column) for column in zip(*values))
        print(f"{name:<16} {mode:<10} {wall:>9.0f} {faulted:>12.0f} {system:>10.0f} {user:>9.0f}")
    print(f"resident memory: peak {lifetime_peak_rss_bytes() / 2**20:.0f} MiB, now {current_rss_bytes() / 2**20:.0f} "
          f"MiB; MiB after each round: {resident_mib}")


if __name__ == "__main__":
    main()
