"""The ``tbftd`` command line: one entry point, subcommands registered by their own modules."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

#: Modules that each define ``register(subparsers)``; a subcommand sets ``func(args) -> int``.
COMMAND_MODULES: tuple[str, ...] = (
    "service.serve",
    "service.learner_commands",
    "service.meter_commands",
    "service.config_commands",
    "service.operator_commands",
    "service.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="tbftd",
        description="On-device personalization daemon: target-block fine-tuning with energy accounting.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    # The daemon's API process serves predictions with numpy. OpenBLAS, which numpy's matrix
    # products use, starts a spinning thread per core; on a Pi's few cores they would fight the
    # trainer child. It reads this when numpy loads, so it is set before any command module.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # Torch's OpenMP threads busy-wait for each other by default, burning CPU time (and the energy
    # this daemon accounts for) whenever another process holds a core: on a busy 2-core machine a
    # 2-thread trainer ran 2.7× slower than a 1-thread one (29 s against 11 s); waiting passively
    # it ran as fast as 1 thread there, and uses both cores when the machine is free. Trainer
    # children and the demo's daemon inherit this; the runtime reads it when it starts, so it is
    # set before any command imports torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except CLIError as exc:
        print(f"tbftd: error: {exc}", file=sys.stderr)
        return 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


if __name__ == "__main__":
    # Run as ``python -m service.cli`` this file is ``__main__``; delegate to the imported module
    # so that CLIError raised by subcommands is the class caught above.
    from service.cli import main as package_main

    raise SystemExit(package_main())
