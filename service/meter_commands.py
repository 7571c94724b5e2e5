"""``tbftd meter …`` subcommands (placeholder until the energy package lands)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``meter`` command group."""
