"""``energy`` stays light: no torch, nothing from ``service``, no side effects on import."""

from __future__ import annotations

import subprocess
import sys

MODULES = (
    "energy",
    "energy.clock",
    "energy.meter",
    "energy.um",
    "energy.line_meter",
    "energy.estimator",
    "energy.profiles",
    "energy.emulator",
    "energy.window",
    "energy.discovery",
    "energy.serial_link",
)


def test_energy_imports_neither_torch_nor_service() -> None:
    code = (
        "import sys\n"
        f"for name in {MODULES!r}: __import__(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'service')))\n"
        "assert not bad, bad\n"
        "import threading; assert threading.active_count() == 1, threading.enumerate()\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60)
    assert completed.returncode == 0, completed.stderr
