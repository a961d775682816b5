"""Build our networks outside nnU-Net's trainers, through the registry: from an nnU-Net plans file, or for a
patch size alone (a plan-like configuration, as the benchmarks do).

    python examples/build_from_plans.py                                   # canonical 2D VM-UNet, 256 x 256
    python examples/build_from_plans.py --plans nnUNetPlans.json -c 3d_fullres
"""
import argparse
import json

import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mamba.architectures import build_network, registered_networks, synthetic_configuration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", help="an nnU-Net plans file (nnUNetPlans.json)")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("--network", default="vm_unet", choices=sorted(registered_networks(variants=True)))
    args = parser.parse_args()

    if args.plans:
        plans = PlansManager(json.load(open(args.plans)))
        configuration = plans.get_configuration(args.configuration)
        input_channels, classes, name = 1, 2, args.configuration
    else:  # VM-UNet's published setting: RGB skin-lesion images, one class
        configuration, input_channels, classes, name = synthetic_configuration((256, 256)), 3, 1, None
    network = build_network(args.network, configuration, num_input_channels=input_channels,
                            num_output_channels=classes, deep_supervision=True, configuration_name=name)
    patch = list(configuration.patch_size)
    print(f"{type(network).__name__}: {sum(p.numel() for p in network.parameters()) / 1e6:.2f} M parameters")
    print(f"strides per level: {network.strides}, total {network.total_stride}")
    with torch.no_grad():
        outputs = network(torch.zeros(1, input_channels, *patch))
    for out, scale in zip(outputs, network.deep_supervision_scales()):
        print(f"  output {tuple(out.shape)} at scale {scale}")


if __name__ == "__main__":
    main()
