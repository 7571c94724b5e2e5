"""``tbftd train-base`` and ``tbftd finetune``: the learner from the command line."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the learner commands."""
