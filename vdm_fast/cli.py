"""The ``vdm-fast`` command: ``demo``, ``bench``, ``env``."""

from __future__ import annotations

import argparse
import sys


def _cmd_env(args) -> int:
    from . import env

    env.main()
    return 0


def _cmd_bench(args) -> int:
    from .bench import cli as bench_cli

    return bench_cli.main(args)


def _cmd_demo(args) -> int:
    from .demo import checkpoint, data, train

    try:
        train.run(args)
    except data.DataError as exc:  # --data names a folder with nothing to train on: a bad flag value
        print(f"vdm-fast demo: error: {exc}", file=sys.stderr)
        return 2
    except checkpoint.CheckpointError as exc:  # a file the user can act on, not a bug: no traceback
        print(f"vdm-fast demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        train.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdm-fast", description="Fast, exact math for variational diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_demo = sub.add_parser("demo", help="train a class-conditional VDM on 8x8 digits: bits/dim, guided samples")
    from .demo.options import add_demo_arguments, check_after_parsing

    add_demo_arguments(p_demo)
    p_demo.set_defaults(func=_cmd_demo, validate=lambda args: check_after_parsing(p_demo, args))

    p_env = sub.add_parser("env", help="versions and which backends are built")
    p_env.set_defaults(func=_cmd_env)

    p_bench = sub.add_parser("bench", help="benchmark the ops against eager PyTorch, torch.compile and diffusers")
    p_bench.add_argument("--quick", action="store_true", help="small shapes, short timings: a smoke run")
    p_bench.add_argument("--ops", default=None, help="comma-separated ops to run (default: all)")
    p_bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p_bench.add_argument("--min-time", type=float, default=None, help="seconds of timing per provider and case")
    p_bench.add_argument("--e2e", action="store_true",
                         help="end-to-end steps instead: UNet training/sampling, VDM ELBO step (cases_e2e.py)")
    p_bench.add_argument("--no-dram", action="store_true", help="skip the DRAM-sized cases")
    p_bench.add_argument("--out", default="vdm_fast_out/bench", help="folder for bench.json and bench.png")
    p_bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "validate", None) is not None:
        args.validate(args)  # what argparse's types cannot check (exit code 2, before any work)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
