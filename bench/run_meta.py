"""What every benchmark's JSON says about its run: the machine it ran on and its settings."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import Any


def machine() -> dict[str, Any]:
    """CPUs this process may use, the platform and the Python version."""
    return {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(), "python": sys.version.split()[0]}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's settings, without where the JSON goes."""
    return {k: v for k, v in vars(args).items() if k != "json"}
