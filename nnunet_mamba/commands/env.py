"""``nnunet-mamba env``: print the export line that makes nnU-Net find our trainers."""
from nnunet_mamba import discovery


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "env", help="print the `export nnUNet_extTrainer=...` line; use as: eval \"$(nnunet-mamba env)\"",
        description="Print the shell line that adds the nnunet-mamba trainers folder to nnUNet_extTrainer (keeping "
                    "folders already listed), so that nnUNetv2_train/_predict find our trainers. Use it as "
                    "eval \"$(nnunet-mamba env)\", e.g. in ~/.bashrc.")
    parser.set_defaults(func=run)


def run(args) -> int:
    print(discovery.export_line())
    return 0
