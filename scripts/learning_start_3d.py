"""How each network starts on the synthetic 3D data (issue 23, item 7): how much of the image its logits see at
initialisation, and test Dice per label after a short run from several seeds.

    python scripts/learning_start_3d.py --networks vm_unet nnunet --seeds 0 1 2 --iterations 100
    python scripts/learning_start_3d.py --networks vm_unet --official-final-expand ...   # VMamba's per-sub-position draw

``nnunet`` is nnU-Net's PlainConvUNet from the same topology (He init, as nnU-Net's trainer). Contrast: for each
output channel, the mean logit inside the sphere (cube) minus the mean over background, at initialisation. Short
run: AdamW 2e-3, weight decay 1e-2, gradient norm clipped at 12, nnU-Net's Dice + CE without deep supervision,
batch 2 of 8 training volumes; Dice on 2 held-out volumes. One thread: the figures are for comparing networks and
starts with each other, not timings.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunet_mamba.architectures import build_network, get_network, synthetic_configuration
from nnunet_mamba.blocks import PatchExpanding
from nnunet_mamba.synthetic import LABELS, _case


def nnunet_unet(topology):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from dynamic_network_architectures.initialization.weight_init import InitWeights_He

    levels = len(topology.conv_kernel_sizes)
    network = PlainConvUNet(1, levels, [min(32 * 2**i, 320) for i in range(levels)], torch.nn.Conv3d,
                            topology.conv_kernel_sizes, topology.pool_op_kernel_sizes, [2] * levels, len(LABELS),
                            [2] * (levels - 1), True, torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True},
                            None, None, torch.nn.LeakyReLU, {"inplace": True}, deep_supervision=False)
    network.apply(InitWeights_He(1e-2))
    return network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=["vm_unet", "nnunet"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=100, help="0: the contrast at initialisation only")
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 32, 32])
    parser.add_argument("--official-final-expand", action="store_true",
                        help="keep VMamba's independent draw of every sub-position of the final expanding")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.official_final_expand:
        PatchExpanding.init_sub_positions_alike = lambda self: None
    shape = tuple(args.shape)
    rng = np.random.default_rng(123)
    cases = [_case(rng, shape) for _ in range(10)]
    images = torch.stack([torch.from_numpy((image - image.mean()) / image.std())[None] for image, _ in cases])
    labels = torch.stack([torch.from_numpy(seg.astype(np.int64))[None] for _, seg in cases])
    topology = synthetic_configuration(shape)
    for name in args.networks:
        for seed in args.seeds:
            torch.manual_seed(seed)
            network = (nnunet_unet(topology) if name == "nnunet"
                       else build_network(get_network(name).small_instance, topology, 1, len(LABELS), False))
            with torch.no_grad():
                logits = network(images[:2])
            seg = labels[:2, 0]
            contrast = {label: [round(float(logits[:, c][seg == value].mean() - logits[:, c][seg == 0].mean()), 3)
                                for c in range(len(LABELS))] for label, value in LABELS.items() if value}
            line = f"{name} seed {seed}: init contrast per channel {contrast}"
            if args.iterations:
                line += f"; test Dice after {args.iterations} iterations {short_run(network, seed, args.iterations, images, labels)}"
            print(line, flush=True)


def short_run(network, seed: int, iterations: int, images, labels) -> dict[str, float]:
    sampler = torch.Generator().manual_seed(seed)
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-2)
    for _ in range(iterations):
        batch = torch.randint(0, 8, (2,), generator=sampler)
        value = loss(network(images[batch]), labels[batch].float())
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()
    network.eval()
    with torch.no_grad():
        predicted = network(images[8:]).argmax(1)
    reference = labels[8:, 0]
    return {label: round(float(2 * ((predicted == v) & (reference == v)).sum()
                               / ((predicted == v).sum() + (reference == v).sum())), 2)
            for label, v in LABELS.items() if v}


if __name__ == "__main__":
    main()
