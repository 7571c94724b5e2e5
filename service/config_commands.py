"""``tbftd config example|check``: the commented example config, and a check of a config file.

``deploy/install.sh`` writes ``/etc/tbftd/tbftd.toml`` from ``tbftd config example``; after editing
it, ``tbftd config check`` says whether the daemon will accept it, before a restart finds out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from service.cli import CLIError
from service.settings import SYSTEM_CONFIG_PATH, SettingsError, example_toml, load_settings, read_config_file


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``config`` command group."""
    config = subparsers.add_parser(
        "config",
        help="the config file: print the commented example, check a file",
        description="Work with the daemon's TOML config file.",
    )
    config.set_defaults(func=_help(config))
    commands = config.add_subparsers(dest="config_command", metavar="COMMAND")

    example = commands.add_parser(
        "example",
        help="print a config with every setting commented out at its default",
        description="Print a TOML config in which every setting is commented out at its default, "
        "with its help text. Uncomment a line to set it.",
    )
    example.set_defaults(func=example_command)

    check = commands.add_parser(
        "check",
        help="check a config file as the daemon would read it",
        description="Read a config file as `tbftd serve --config PATH` does (ignoring TBFTD_* "
        "environment variables) and name the first problem; exit status 2 if there is one.",
    )
    check.add_argument("path", nargs="?", type=Path, default=SYSTEM_CONFIG_PATH,
                       help=f"the config file (default: {SYSTEM_CONFIG_PATH})")
    check.set_defaults(func=check_command)


def example_command(args: argparse.Namespace) -> int:
    """Print the example config."""
    sys.stdout.write(example_toml())
    return 0


def check_command(args: argparse.Namespace) -> int:
    """Load ``args.path`` alone on the defaults; print what it sets."""
    try:
        load_settings(args.path, env={})
        names = sorted(read_config_file(args.path))
    except SettingsError as exc:
        raise CLIError(str(exc)) from exc
    print(f"{args.path}: ok; sets {', '.join(names) if names else 'nothing (all defaults)'}")
    return 0


def _help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show
