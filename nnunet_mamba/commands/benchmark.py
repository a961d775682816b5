"""``nnunet-mamba benchmark scan|network``: time and measure the selective-scan backends or a network's train step."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="time forward+backward and peak memory of the scan backends (scan) or a network (network)")
    parser.add_argument("what", choices=["scan", "network"], help="what to benchmark")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384],
                        help="scan: sequence lengths L (default: 1024 4096 16384)")
    parser.add_argument("--dim", type=int, default=192, help="scan: channels (default: 192)")
    parser.add_argument("--d-state", type=int, default=16, help="scan: state size N (default: 16)")
    parser.add_argument("--groups", type=int, default=4, help="scan: B/C groups, i.e. scan directions (default: 4)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: scan 1, network 8)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up (default: 5)")
    parser.add_argument("--no-mambapy", action="store_true", help="scan: skip the mambapy comparison")
    parser.add_argument("--threads", type=int, default=None,
                        help="scan: torch threads in each measurement (default: torch's default)")
    parser.add_argument("--network", default="vm_unet", help="network: registry name (default: vm_unet)")
    parser.add_argument("--patch", type=int, nargs="+", default=[256, 256],
                        help="network: patch size, 2 or 3 numbers (default: 256 256)")
    parser.add_argument("--backends", nargs="+", default=["auto"], choices=["auto", "cuda", "torch"],
                        help="network: scan backends to compare (default: auto)")
    parser.add_argument("--no-amp", action="store_true", help="network: float32 instead of bf16 autocast on CUDA")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.what == "network":
        from nnunet_mamba.benchmarks.network import format_network_table, run_network_benchmark

        rows = run_network_benchmark(args.network, tuple(args.patch), batch=args.batch or 8, device=args.device,
                                     amp=not args.no_amp, backends=args.backends, steps=args.repeats)
        print(format_network_table(rows))
        return 0

    from nnunet_mamba.benchmarks.scan import run_scan_benchmark

    rows = run_scan_benchmark(
        lengths=tuple(args.lengths), dim=args.dim, d_state=args.d_state, groups=args.groups, batch=args.batch or 1,
        repeats=args.repeats, device=args.device, include_mambapy=not args.no_mambapy,
        include_cuda=args.device.startswith("cuda"), threads=args.threads)
    return 1 if any("error" in row for row in rows) else 0
