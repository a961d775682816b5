"""``nnunet-mamba benchmark MODE``: one sub-command per measurement, each with its own flags.

Modes: ``scan`` (the selective-scan backends), ``network`` (a network's train step next to nnU-Net's UNet),
``flops`` (parameters and FLOPs, selective scan included), ``predict`` (the stock nnUNetv2_predict of one case),
``planner`` (our plans next to nnU-Net's for a typical CT dataset), ``memory-model`` (each network's memory
estimate against a measured forward pass) and ``planner-gpu`` (a planned training step under the budget's cap).
The measurements live in :mod:`nnunet_mamba.benchmarks`; this module parses and prints.
"""


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
        "benchmark", help="time the scan backends, a network's train step or nnUNetv2_predict; count FLOPs; compare "
                          "the planner's choices and its memory model with measurements (one MODE each)",
        description="Measure one thing per MODE; `nnunet-mamba benchmark MODE --help` lists that mode's flags. "
                    "Figures and how they were taken: docs/benchmarks.md.")
    modes = parser.add_subparsers(dest="what", metavar="MODE")
    modes.required = True
    _register_scan(modes)
    _register_network(modes)
    _register_flops(modes)
    _register_predict(modes)
    _register_planner(modes)


def _add_device(parser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")


def _add_repeats(parser) -> None:
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up (default: 5)")


def _add_network_input(parser, batch: int, several: bool = False) -> None:
    if several:
        parser.add_argument("--network", nargs="+", default=["vm_unet"],
                            help="registered names, variants' too (`nnunet-mamba models`), timed side by side "
                                 "(default: vm_unet)")
    else:
        parser.add_argument("--network", default="vm_unet",
                            help="registered name, a variant's too (`nnunet-mamba models`; default: vm_unet)")
    parser.add_argument("--patch", type=int, nargs="+", default=[256, 256],
                        help="patch size, 2 or 3 numbers (default: 256 256)")
    parser.add_argument("--batch", type=int, default=batch, help=f"batch size (default: {batch})")


def _add_backends(parser, default: list, help: str) -> None:
    parser.add_argument("--backends", nargs="+", default=default, choices=_ScanBackendChoices(), metavar="BACKEND",
                        help=help)


def _register_scan(modes) -> None:
    scan = modes.add_parser("scan", help="forward+backward time and peak memory of each selective-scan backend",
                            description="Time forward+backward and peak memory of the selective-scan backends "
                                        "(and mambapy's scan) at a few sequence lengths.")
    scan.add_argument("--lengths", type=_sequence_length, nargs="+", default=[1024, 4096, 16384],
                      help="sequence lengths L (default: 1024 4096 16384)")
    scan.add_argument("--dim", type=int, default=192, help="channels (default: 192)")
    scan.add_argument("--d-state", type=int, default=16, help="state size N (default: 16)")
    scan.add_argument("--groups", type=int, default=4, help="B/C groups, i.e. scan directions (default: 4)")
    scan.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    _add_device(scan)
    _add_repeats(scan)
    scan.add_argument("--no-mambapy", action="store_true", help="skip the mambapy comparison")
    scan.add_argument("--threads", type=int, default=None,
                      help="torch threads in each measurement (default: torch's default)")
    scan.set_defaults(func=_run_scan)


def _register_network(modes) -> None:
    network = modes.add_parser("network", help="a network's train step and inference, per scan backend",
                               description="Time AdamW train steps and inference of registered networks per scan "
                                           "backend, optionally next to nnU-Net's UNet built from the same plan; "
                                           "with each one's forward multiply-adds at the patch, the FLOP rate it "
                                           "achieves and its peak training memory (CPU too).")
    _add_network_input(network, batch=8, several=True)
    _add_device(network)
    _add_repeats(network)
    _add_backends(network, ["auto"], "scan backends to compare, 'auto' or the names `nnunet-mamba doctor` lists "
                                     "(default: auto)")
    network.add_argument("--no-amp", action="store_true", help="float32 instead of bf16 autocast on CUDA")
    network.add_argument("--compare-nnunet", action="store_true",
                         help="also time nnU-Net's default UNet built from the same plan, and print ratios")
    network.set_defaults(func=_run_network)


def _register_flops(modes) -> None:
    flops = modes.add_parser("flops", help="a network's parameters and FLOPs/MACs, selective scan included",
                             description="Count a registered network's parameters and FLOPs/MACs of one forward "
                                         "pass, selective scan included (or with a paper's own counter).")
    _add_network_input(flops, batch=1)
    _add_device(flops)
    # defaults are VM-UNet's published setting (RGB skin-lesion images, one foreground class)
    flops.add_argument("--input-channels", type=int, default=3, help="input channels (default: 3)")
    flops.add_argument("--num-classes", type=int, default=1, help="output channels (default: 1)")
    flops.add_argument("--protocol", choices=["ours", "thop", "fvcore"], default="ours",
                       help="our counter (true parameters, selective scan included; default), or a paper's own "
                            "counter: thop (thop.profile, LightM-UNet's figures) or fvcore (FlopCountAnalysis, "
                            "Swin-UMamba's figures); these two need the extra '.[paper-counts]'")
    flops.add_argument("--network-arg", action="append", default=[], metavar="NAME=VALUE",
                       help="a constructor argument of the network (repeatable), e.g. skip_scale=channel for LightM-UNet; "
                            "registered variants have names of their own (light_m_unet_v0). VALUE is read as a "
                            "Python literal, else as a string")
    flops.add_argument("--distillation", action="store_true",
                       help="also count DSVM-UNet's training-only self-distillation heads")
    flops.set_defaults(func=_run_flops)


def _register_predict(modes) -> None:
    predict = modes.add_parser("predict", help="nnUNetv2_predict of one synthetic case per scan backend",
                               description="Time the stock nnUNetv2_predict of one synthetic case per scan backend, "
                                           "next to nnU-Net's UNet.")
    predict.add_argument("--trainer", default="nnUNetTrainerVMUNet",
                         help="the trainer whose network predicts (default: nnUNetTrainerVMUNet)")
    predict.add_argument("--case-shape", type=int, nargs=3, default=[64, 128, 128],
                         help="shape of the synthetic case, z y x (default: 64 128 128)")
    predict.add_argument("--configuration", default="3d_fullres", help="configuration (default: 3d_fullres)")
    predict.add_argument("--workdir", default=None,
                         help="workspace to create or reuse (default: a new temporary folder)")
    _add_backends(predict, ["torch", "numba"], "scan backends to time (default: torch numba; 'auto' means the "
                                               "same)")
    _add_device(predict)
    _add_repeats(predict)
    predict.set_defaults(func=_run_predict)


def _register_planner(modes) -> None:
    networks_help = "registered networks (default: every one)"
    planner = modes.add_parser("planner", help="our plans for a typical CT dataset next to nnU-Net's (README table)",
                               description="Plan a fingerprint-only typical CT dataset with nnU-Net's default "
                                           "planner and with ours for every network and budget; print the "
                                           "markdown table.")
    planner.add_argument("--budgets", type=float, nargs="+", default=[8, 24, 80],
                         help="GPU memory budgets in GiB (default: 8 24 80)")
    planner.add_argument("--networks", nargs="+", default=None, help=networks_help)
    planner.set_defaults(func=_run_planner)
    memory = modes.add_parser("memory-model", help="each network's memory estimate against a measured forward pass",
                              description="Every network's saved-activation estimate against a measured forward "
                                          "pass (CPU), per width and patch; print the markdown table.")
    memory.add_argument("--networks", nargs="+", default=None, help=networks_help)
    memory.set_defaults(func=_run_memory_model)
    gpu = modes.add_parser("planner-gpu", help="a planned training step under the budget's cap, on a CUDA GPU",
                           description="Plan the typical CT dataset, cap this process at each budget and run three "
                                       "nnU-Net training steps at the planned patch and batch (needs a CUDA GPU).")
    gpu.add_argument("--budgets", type=float, nargs="+", default=[8, 24],
                     help="GPU memory budgets in GiB (default: 8 24)")
    gpu.add_argument("--networks", nargs="+", default=None, help=networks_help)
    gpu.add_argument("-c", dest="configurations", nargs="+", default=["2d", "3d_fullres"],
                     help="configurations to measure (default: 2d 3d_fullres)")
    gpu.set_defaults(func=_run_planner_gpu)


def _without_gpu(args, needed_by: str, otherwise: str = "") -> bool:
    """Says so and returns True when ``needed_by`` asks for a CUDA GPU and torch sees none."""
    import sys

    import torch

    if torch.cuda.is_available():
        return False
    print(f"nnunet-mamba benchmark {args.what}: {needed_by} needs a CUDA GPU, and torch sees none "
          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). Run it on a GPU machine"
          f"{otherwise}.", file=sys.stderr)
    return True


def _cpu_or_gpu_found(args) -> bool:
    """False (having said why) when --device asks for a CUDA GPU that torch does not see."""
    return not (args.device.startswith("cuda")
                and _without_gpu(args, f"--device {args.device}", otherwise=", or use --device cpu"))


def _run_scan(args) -> int:
    from nnunet_mamba.benchmarks.scan import run_scan_benchmark

    if not _cpu_or_gpu_found(args):
        return 2
    rows = run_scan_benchmark(
        lengths=tuple(args.lengths), dim=args.dim, d_state=args.d_state, groups=args.groups, batch=args.batch,
        repeats=args.repeats, device=args.device, include_mambapy=not args.no_mambapy,
        include_cuda=args.device.startswith("cuda"), threads=args.threads)
    return 1 if any("error" in row for row in rows) else 0


FREED_MEMORY_NOTE = ("Every model above ran with glibc keeping freed memory in the process, as our trainers train "
                     "on CPU (nnunet_mamba.cpu_allocator); NNUNET_MAMBA_KEEP_FREED_MEMORY=0 times them with glibc's "
                     "defaults.")


def _run_network(args) -> int:
    if not _cpu_or_gpu_found(args):
        return 2
    from nnunet_mamba.benchmarks.network import format_network_table, run_network_benchmark

    rows = run_network_benchmark(args.network, tuple(args.patch), batch=args.batch, device=args.device,
                                 amp=not args.no_amp, backends=args.backends, steps=args.repeats,
                                 compare_nnunet=args.compare_nnunet)
    print(format_network_table(rows))
    if any(row.get("freed_memory_kept") for row in rows):
        print(f"\n{FREED_MEMORY_NOTE}")
    return 0


def _run_predict(args) -> int:
    if not _cpu_or_gpu_found(args):
        return 2
    from pathlib import Path

    from nnunet_mamba.benchmarks.predict import format_predict_table, run_predict_benchmark

    backends = ["torch", "numba"] if args.backends == ["auto"] else args.backends
    rows = run_predict_benchmark(args.trainer, tuple(args.case_shape), args.configuration, backends,
                                 rounds=args.repeats, workdir=Path(args.workdir) if args.workdir else None,
                                 device=args.device, compare_nnunet=True)
    print(format_predict_table(rows))
    return 0


def _run_planner(args) -> int:
    from nnunet_mamba.benchmarks.planner import compare, typical_ct_workspace

    with typical_ct_workspace():
        print(compare(_networks(args), args.budgets))
    return 0


def _run_memory_model(args) -> int:
    from nnunet_mamba.benchmarks.planner import memory_model_table

    print(memory_model_table(_networks(args)))
    return 0


def _run_planner_gpu(args) -> int:
    if _without_gpu(args, "measuring a planned training step's memory"):
        return 2
    from nnunet_mamba.benchmarks.planner import typical_ct_workspace
    from nnunet_mamba.benchmarks.planner_gpu import check

    with typical_ct_workspace():
        print(check(_networks(args), args.budgets, args.configurations))
    return 0


def _networks(args) -> list:
    from nnunet_mamba.architectures import registered_networks

    return args.networks or list(registered_networks())


def _run_flops(args) -> int:
    if not _cpu_or_gpu_found(args):
        return 2
    import sys

    import torch

    from nnunet_mamba.architectures import build_network, synthetic_configuration
    from nnunet_mamba.benchmarks.flops import CONVOLUTION, LINEAR, SELECTIVE_SCAN, count_flops, format_flops_table

    batch = args.batch
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
