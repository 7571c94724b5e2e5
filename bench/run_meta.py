"""What every benchmark's JSON says about its run: the machine it ran on and its settings."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """CPUs this process may use, the platform and the Python version."""
    return {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(), "python": sys.version.split()[0]}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's settings, without where the JSON goes."""
    return {k: v for k, v in vars(args).items() if k != "json"}


#: Where the paper's checkpoint and the real CIFAR-10 subset are looked for (``--reference``).
DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
REFERENCE_DATA = "cifar10-subset.npz"
REFERENCE_CHECKPOINT = "tbft-resnet26-cifar10.pth"


def real_data(reference: Path, data: str | None, checkpoint: str | None) -> tuple[str, str] | None:
    """The real data and its base model: ``data``/``checkpoint`` when given, else the reference
    files under ``reference``; None, with a note on stderr, when a file is missing."""
    chosen = (data or str(reference / REFERENCE_DATA), checkpoint or str(reference / REFERENCE_CHECKPOINT))
    missing = [path for path in chosen if not Path(path).is_file()]
    if missing:
        print(f"note: no real-data run: {', '.join(missing)} not found (the paper's checkpoint and the CIFAR-10 "
              "subset; --reference DIR or --data/--checkpoint)", file=sys.stderr)
        return None
    return chosen
