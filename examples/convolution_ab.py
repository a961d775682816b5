"""The network with its depthwise and pointwise convolutions as ``blocks.convolutions`` computes them, against the
same network (same starting weights) with them run by PyTorch's ``nn.Conv2d``/``nn.Conv3d``: train steps and inference
passes taking turns in one process, so that the ratio is not the drift of a shared machine.

    python examples/convolution_ab.py --network light_m_unet --patch 64 64 64 --batch 1 --rounds 5
"""
import argparse
import copy
import statistics
import time

import torch
from torch import nn

from nnunet_mamba.architectures import build_network, synthetic_configuration
from nnunet_mamba.benchmarks.network import TimedModel
from nnunet_mamba.blocks.convolutions import CONVOLUTION_CLASSES


def with_pytorch_convolutions(network: nn.Module) -> nn.Module:
    plain = copy.deepcopy(network)
    for module in plain.modules():
        if isinstance(module, CONVOLUTION_CLASSES):
            module.__class__ = nn.Conv3d if isinstance(module, nn.Conv3d) else nn.Conv2d
    return plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="light_m_unet")
    parser.add_argument("--patch", type=int, nargs="+", default=[64, 64, 64])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = build_network(args.network, synthetic_configuration(tuple(args.patch)), 1, 3, False)
    models = {label: TimedModel(network, None, args.patch, args.batch, 1, 3, "cpu", amp=False) for label, network in
              (("blocks.convolutions", ours), ("PyTorch's convolutions", with_pytorch_convolutions(ours)))}

    for name, mode in (("train step", "train_step"), ("inference", "inference")):
        times = {label: [] for label in models}
        for round_ in range(args.rounds + 1):  # the first round warms up
            for label, model in models.items():
                started = time.perf_counter()
                getattr(model, mode)()
                if round_:
                    times[label].append(time.perf_counter() - started)
        medians = {label: statistics.median(values) for label, values in times.items()}
        ours_s, plain_s = medians.values()
        print(f"{args.network} {'x'.join(map(str, args.patch))} batch {args.batch}, {name}: "
              + ", ".join(f"{label} {seconds * 1000:.0f} ms" for label, seconds in medians.items())
              + f"; ratio {ours_s / plain_s:.2f}")


if __name__ == "__main__":
    main()
