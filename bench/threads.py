"""Trainer threads on a busy machine: a training step at each thread count, with cores kept busy.

For 0 .. cores−1 busy cores (each kept busy by a spinning process pinned to it), one
forward+backward+step of a ``full`` fine-tune on a batch of 128 CIFAR-sized images is timed at
every thread count from 1 to the cores, side by side, and at the count the daemon's trainer
chooses there (:func:`service.cores.trainer_threads`, measuring the idle cores as a job does).
Wall seconds per step (the median of ``--steps``), and the ratio to the fastest count of the same
condition: the price of each choice.

    python bench/threads.py                  # 5 steps per cell
    python bench/threads.py --quick          # 2 steps per cell (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def spin(cores: list[int]) -> list[subprocess.Popen[bytes]]:
    """A spinning process pinned to each of ``cores``: the load another program would put there."""
    code = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"
    return [subprocess.Popen([sys.executable, "-c", code, str(core)]) for core in cores]


def time_steps(threads: int, steps: int) -> float:
    """Median wall seconds of one training step of the whole model at ``threads`` threads."""
    import torch
    from torch.nn import functional as F

    from device.model import ResNet26

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ResNet26().train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if step:  # the first step pays for allocations and kernel choices
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 steps per cell (CI)")
    parser.add_argument("--json", type=Path, help="where to write the JSON (default: bench/results/threads-<time>.json)")
    args = parser.parse_args(argv)
    steps = 2 if args.quick else args.steps
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from service.cores import trainer_threads, usable_cores

    cores = sorted(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for busy in range(len(cores)):
        spinners = spin(cores[-busy:] if busy else [])
        try:
            time.sleep(0.3)
            chosen = trainer_threads(None, usable_cores())
            cells = {t: time_steps(t, steps) for t in range(1, len(cores) + 1)}
        finally:
            for process in spinners:
                process.kill()
                process.wait()
        fastest = min(cells.values())
        for t, seconds in cells.items():
            rows.append({"busy_cores": busy, "threads": t, "seconds_per_step": seconds, "ratio_to_fastest": seconds / fastest,
                         "chosen": t == chosen})
    print(f"One training step of the whole model, batch 128 at 32 px, {steps} steps per cell; wall seconds "
          f"(median); {len(cores)} cores, busy ones each held by a spinning process.\n")
    header = f"{'busy cores':>10} {'threads':>7} {'s / step':>9} {'× fastest':>9}  trainer's choice"
    print(header + "\n" + "-" * len(header))
    for row in rows:
        print(f"{row['busy_cores']:>10} {row['threads']:>7} {row['seconds_per_step']:9.3f} "
              f"{row['ratio_to_fastest']:9.2f}  {'← chosen' if row['chosen'] else ''}")
    from bench import run_meta

    out = args.json or Path(__file__).parent / "results" / f"threads-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {"machine": run_meta.machine(), "steps": steps, "load_average_before": load_before,
                                        "load_average_after": os.getloadavg()}, "rows": rows}, indent=2))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
