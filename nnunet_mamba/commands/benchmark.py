"""``nnunet-mamba benchmark scan|network|flops|predict``: time the selective-scan backends or a network's train
step, count a network's FLOPs (selective scan included), or time the stock nnUNetv2_predict of one case."""


def _sequence_length(text: str) -> int:
    """--lengths: an integer L >= 1 (argparse names the option and exits with 2)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is no sequence length: give lengths L >= 1, e.g. 1024 4096")
    return value


class _ScanBackendChoices:
    """The scan backends' table (``nnunet_mamba.ops.backends``) as argparse choices, read when argparse first
    checks them: importing the ops package imports torch, which building the CLI's parser must not (hence the
    option's fixed metavar: argparse would list the choices while building it)."""

    def _names(self):
        from nnunet_mamba.ops.backends import BACKEND_CHOICES

        return BACKEND_CHOICES

    def __contains__(self, name) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="time forward+backward and peak memory of the scan backends (scan) or a network (network), "
                          "or count a network's parameters and FLOPs/MACs, selective scan included (flops), or time "
                          "nnUNetv2_predict of one synthetic case per scan backend next to nnU-Net's UNet (predict)")
    parser.add_argument("what", choices=["scan", "network", "flops", "predict"], help="what to benchmark")
    parser.add_argument("--lengths", type=_sequence_length, nargs="+", default=[1024, 4096, 16384],
                        help="scan: sequence lengths L (default: 1024 4096 16384)")
    parser.add_argument("--dim", type=int, default=192, help="scan: channels (default: 192)")
    parser.add_argument("--d-state", type=int, default=16, help="scan: state size N (default: 16)")
    parser.add_argument("--groups", type=int, default=4, help="scan: B/C groups, i.e. scan directions (default: 4)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: scan 1, network 8, flops 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up (default: 5)")
    parser.add_argument("--no-mambapy", action="store_true", help="scan: skip the mambapy comparison")
    parser.add_argument("--threads", type=int, default=None,
                        help="scan: torch threads in each measurement (default: torch's default)")
    parser.add_argument("--network", default="vm_unet", help="network, flops: registry name (default: vm_unet)")
    parser.add_argument("--patch", type=int, nargs="+", default=[256, 256],
                        help="network, flops: patch size, 2 or 3 numbers (default: 256 256)")
    # defaults are VM-UNet's published setting (RGB skin-lesion images, one foreground class)
    parser.add_argument("--input-channels", type=int, default=3, help="flops: input channels (default: 3)")
    parser.add_argument("--num-classes", type=int, default=1, help="flops: output channels (default: 1)")
    parser.add_argument("--protocol", choices=["ours", "thop", "fvcore"], default="ours",
                        help="flops: our counter (true parameters, selective scan included; default), or a paper's "
                             "own counter: thop (thop.profile, LightM-UNet's figures) or fvcore (FlopCountAnalysis, "
                             "Swin-UMamba's figures); these two need the extra '.[paper-counts]'")
    parser.add_argument("--network-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="flops: a constructor argument of the network (repeatable), e.g. variant=v0 for "
                             "LightM-UNet's first upload; VALUE is read as a Python literal, else as a string")
    parser.add_argument("--distillation", action="store_true",
                        help="flops: also count DSVM-UNet's training-only self-distillation heads")
    parser.add_argument("--backends", nargs="+", default=["auto"], choices=_ScanBackendChoices(),
                        metavar="BACKEND", help="network: scan backends to compare, 'auto' or the names `nnunet-mamba "
                                                "doctor` lists (default: auto); predict: default torch numba")
    parser.add_argument("--no-amp", action="store_true", help="network: float32 instead of bf16 autocast on CUDA")
    parser.add_argument("--compare-nnunet", action="store_true",
                        help="network: also time nnU-Net's default UNet built from the same plan, and print ratios")
    parser.add_argument("--trainer", default="nnUNetTrainerVMUNet",
                        help="predict: the trainer whose network predicts (default: nnUNetTrainerVMUNet)")
    parser.add_argument("--case-shape", type=int, nargs=3, default=[64, 128, 128],
                        help="predict: shape of the synthetic case, z y x (default: 64 128 128)")
    parser.add_argument("--configuration", default="3d_fullres", help="predict: configuration (default: 3d_fullres)")
    parser.add_argument("--workdir", default=None,
                        help="predict: workspace to create or reuse (default: a new temporary folder)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import sys

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"nnunet-mamba benchmark {args.what}: --device {args.device} needs a CUDA GPU, and torch sees none "
              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). Run it on a GPU machine, or "
              f"use --device cpu.", file=sys.stderr)
        return 2
    if args.what == "flops":
        return _run_flops(args)
    if args.what == "predict":
        from pathlib import Path

        from nnunet_mamba.benchmarks.predict import format_predict_table, run_predict_benchmark

        backends = ["torch", "numba"] if args.backends == ["auto"] else args.backends
        rows = run_predict_benchmark(args.trainer, tuple(args.case_shape), args.configuration, backends,
                                     rounds=args.repeats, workdir=Path(args.workdir) if args.workdir else None,
                                     device=args.device, compare_nnunet=True)
        print(format_predict_table(rows))
        return 0
    if args.what == "network":
        from nnunet_mamba.benchmarks.network import format_network_table, run_network_benchmark

        rows = run_network_benchmark(args.network, tuple(args.patch), batch=args.batch or 8, device=args.device,
                                     amp=not args.no_amp, backends=args.backends, steps=args.repeats,
                                     compare_nnunet=args.compare_nnunet)
        print(format_network_table(rows))
        return 0

    from nnunet_mamba.benchmarks.scan import run_scan_benchmark

    rows = run_scan_benchmark(
        lengths=tuple(args.lengths), dim=args.dim, d_state=args.d_state, groups=args.groups, batch=args.batch or 1,
        repeats=args.repeats, device=args.device, include_mambapy=not args.no_mambapy,
        include_cuda=args.device.startswith("cuda"), threads=args.threads)
    return 1 if any("error" in row for row in rows) else 0


def _run_flops(args) -> int:
    import sys

    import torch

    from nnunet_mamba.architectures import build_network, synthetic_configuration
    from nnunet_mamba.benchmarks.flops import CONVOLUTION, LINEAR, SELECTIVE_SCAN, count_flops, format_flops_table

    batch = args.batch or 1
    torch.manual_seed(0)
    try:
        overrides = _network_args(args.network_arg)
        model = build_network(args.network, synthetic_configuration(args.patch), args.input_channels,
                              args.num_classes, deep_supervision=False, **overrides)
    except (KeyError, ValueError, TypeError) as error:
        print(f"nnunet-mamba benchmark flops: {error.args[0]}", file=sys.stderr)
        return 2
    model = model.to(args.device).eval()
    x = torch.randn(batch, args.input_channels, *args.patch, device=args.device)
    if args.protocol != "ours":
        return _print_protocol_count(args, model, x)
    report = count_flops(model, x)

    macs = report.macs_by_category
    print(f"{args.network}: input {batch}x{args.input_channels}x{'x'.join(map(str, args.patch))}, "
          f"{args.num_classes} output channels, {len(args.patch)}D, forward pass")
    print(f"parameters: {report.parameters / 1e6:.2f} M ({report.parameters:,})")
    print(f"total: {report.gmacs:.3f} GMACs (multiply-accumulates, what VMamba/VM-UNet papers call FLOPs) = "
          f"{report.gflops:.3f} GFLOPs (multiply and add counted separately)")
    print(f"without the selective scan: {(report.total_macs - macs[SELECTIVE_SCAN]) / 1e9:.3f} GMACs; "
          f"convolutions and nn.Linear only: {(macs[CONVOLUTION] + macs[LINEAR]) / 1e9:.3f} GMACs")
    print(format_flops_table({args.network: report}))
    if args.distillation:
        _print_distillation_flops(model, x, report)
    print(f"selective scan: {len(report.scan_calls)} calls, VMamba's analytic count (9*B*L*D*N + B*D*L for D "
          f"+ B*D*L for z). Not counted: elementwise ops, norms, activations, data movement.")
    return 0


def _print_distillation_flops(model, x, network_report) -> None:
    import torch

    from nnunet_mamba.benchmarks.flops import count_flops
    from nnunet_mamba.distillation import DualSelfDistillation, LevelFeatureTap

    with torch.no_grad(), LevelFeatureTap(*model.level_feature_modules()) as levels:
        model(x)
    for label, options in (("both", {}), ("projection only", {"progressive": False}),
                           ("progressive only", {"projection": False})):
        heads = DualSelfDistillation.for_network(model, **options).to(x.device)
        report = count_flops(heads, levels.encoder, levels.decoder)
        print(f"DSVM-UNet training ({label}): heads {report.parameters / 1e6:.2f} M parameters, "
              f"{report.gmacs:.3f} GMACs; network + heads {(network_report.parameters + report.parameters) / 1e6:.2f} M, "
              f"{network_report.gmacs + report.gmacs:.3f} GMACs = "
              f"{network_report.gflops + report.gflops:.3f} GFLOPs (forward; inference is the network alone)")


def _network_args(pairs: list[str]) -> dict:
    import ast

    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--network-arg {pair!r} is not NAME=VALUE")
        try:
            overrides[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name.strip()] = value
    return overrides


def _print_protocol_count(args, model, x) -> int:
    import sys

    from nnunet_mamba.benchmarks.flops import count_fvcore, count_thop

    try:
        count = (count_thop if args.protocol == "thop" else count_fvcore)(model, x)
    except ImportError as error:
        print(f"nnunet-mamba benchmark flops: {error}", file=sys.stderr)
        return 2
    counter = "thop.profile (thop 0.1.1)" if args.protocol == "thop" else "fvcore FlopCountAnalysis.total()"
    print(f"{args.network}: input {'x'.join(map(str, x.shape))}, {args.num_classes} output channels, "
          f"{len(args.patch)}D, forward pass, counted by {counter}")
    print(f"parameters ({args.protocol}): {count.parameters / 1e6:.2f} M ({count.parameters:,}); "
          f"true: {count.true_parameters / 1e6:.2f} M ({count.true_parameters:,})")
    print(f"GMACs ({args.protocol}, batch {x.shape[0]} inside): {count.gmacs:.2f} ({count.macs:,} MACs); "
          f"the selective scan ({count.scan_macs / 1e9:.2f} GMACs by VMamba's formula) is not in it")
    return 0
