"""Fine-tuning benchmark: every strategy on the same drifted samples, measured side by side.

For each drift type (input, feature, output) and each strategy (block1, block2, block3, fc, full,
bn) a fresh copy of the base model is fine-tuned on the same samples, each run in its own spawned
process so that its peak resident memory is its own. One table: accuracy before → after on held-out
test samples, wall and CPU seconds, peak RSS, epochs, and the time ratio to ``full`` of the same
drift type. JSON with every figure is written next to the table.

    python bench/finetune.py                 # 1,000 training samples, 10 epochs, no early stop
    python bench/finetune.py --quick         # a small run (CI)
    python bench/finetune.py --bn-mode frozen
    python bench/finetune.py --data ../shared/reference/cifar10-subset.npz \\
        --checkpoint ../shared/reference/tbft-resnet26-cifar10.pth
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

STRATEGIES = ("block1", "block2", "block3", "fc", "full", "bn")
DRIFTS = ("input", "feature", "output")


@dataclass
class Run:
    """One strategy on one scenario."""

    scenario: str
    drift: str
    strategy: str
    bn_mode: str
    accuracy_before: float
    accuracy_after: float
    val_accuracy_after: float
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    epochs: int
    best_epoch: int
    cache: str
    time_ratio_to_full: float = float("nan")


def _job(arrays_path: str, checkpoint: str | None, strategy: str, config: dict[str, Any], threads: int) -> dict[str, Any]:
    """Runs in a fresh process: load the model and samples, fine-tune, evaluate on the test split."""
    import torch

    from device.checkpoint import load_checkpoint
    from device.finetune import FinetuneConfig, finetune
    from device.inference import predict
    from device.model import ModelConfig
    from device.samples import Samples
    from device.shipped import load_shipped_base_model

    torch.set_num_threads(threads)
    with np.load(arrays_path) as data:
        arrays = {k: data[k] for k in data.files}
    if checkpoint:
        model = load_checkpoint(checkpoint, config=ModelConfig(num_classes=int(arrays["num_classes"]))).model
    else:
        model = load_shipped_base_model().model
    train = Samples.from_arrays(arrays["train_x"], arrays["train_y"])
    val = Samples.from_arrays(arrays["val_x"], arrays["val_y"])
    test_before = float((predict(model, arrays["test_x"]).classes == arrays["test_y"]).mean())
    result = finetune(model, strategy, train, val, FinetuneConfig(**config))
    test_after = float((predict(model, arrays["test_x"]).classes == arrays["test_y"]).mean())
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "accuracy_before": test_before,
        "accuracy_after": test_after,
        "val_accuracy_after": result.accuracy_after,
        "wall_seconds": result.seconds,
        "cpu_seconds": result.cpu_seconds,
        "peak_rss_mb": peak_kb / 1024,
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "cache": result.cache,
    }


def build_scenarios(args: argparse.Namespace) -> list[Any]:
    """The drifted sample sets, generated or from ``--data``."""
    from drift.scenarios import Split, array_scenario, shapes_scenario

    drifts = args.drifts
    if args.data is None:
        return [
            shapes_scenario(d, args.train_size, args.val_size, args.test_size, seed=args.seed,
                            corruption=args.corruption, severity=args.severity)
            for d in drifts
        ]
    from drift.loaders import load_npz

    pool = Split(*load_npz(args.data, split="train"))
    held_out = Split(*load_npz(args.data, split="test"))
    scenarios = []
    for d in drifts:
        if d == "feature":
            print("note: feature drift needs sub-population labels; skipped for --data", file=sys.stderr)
            continue
        scenarios.append(array_scenario(d, pool, held_out, args.train_size, seed=args.seed,
                                        corruption=args.corruption, severity=args.severity,
                                        name=Path(args.data).stem))
    return scenarios


def run_benchmark(args: argparse.Namespace) -> list[Run]:
    """Every (scenario, strategy, BN mode) in a spawned process, one after another."""
    context = multiprocessing.get_context("spawn")
    modes = ("adapt", "frozen") if args.bn_mode == "both" else (args.bn_mode,)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="tbftd-bench-") as workdir:
        for scenario in build_scenarios(args):
            arrays_path = os.path.join(workdir, "arrays.npz")
            num_classes = int(max(scenario.train.y.max(), scenario.val.y.max(), scenario.test.y.max())) + 1
            np.savez(arrays_path, train_x=scenario.train.x, train_y=scenario.train.y, val_x=scenario.val.x,
                     val_y=scenario.val.y, test_x=scenario.test.x, test_y=scenario.test.y, num_classes=num_classes)
            for strategy in args.strategies:
                # full and bn do not depend on the BN mode: run them once.
                for mode in modes if strategy not in ("full", "bn") else modes[:1]:
                    config = {"epochs": args.epochs, "patience": args.patience, "bn_mode": mode, "seed": args.seed}
                    with context.Pool(1) as pool:
                        figures = pool.apply(_job, (arrays_path, args.checkpoint, strategy, config, args.threads))
                    run = Run(scenario.name, scenario.drift.value, strategy, mode if strategy not in ("full", "bn") else "-",
                              **figures)
                    runs.append(run)
                    print(f"  {scenario.name:<16} {strategy:<7} {run.bn_mode:<6} "
                          f"{100 * run.accuracy_before:5.1f} → {100 * run.accuracy_after:5.1f}  "
                          f"{run.wall_seconds:7.1f} s", file=sys.stderr, flush=True)
    for run in runs:
        full = [r for r in runs if r.scenario == run.scenario and r.strategy == "full"]
        if full:
            run.time_ratio_to_full = run.wall_seconds / full[0].wall_seconds
    return runs


def format_table(runs: list[Run]) -> str:
    """The results as a fixed-width text table."""
    header = (f"{'scenario':<16} {'strategy':<8} {'bn':<6} {'accuracy before → after':>24} {'wall s':>7} "
              f"{'cpu s':>7} {'peak MB':>8} {'epochs':>6} {'time/full':>9}")
    lines = [header, "-" * len(header)]
    for r in runs:
        accuracy = f"{100 * r.accuracy_before:5.1f} → {100 * r.accuracy_after:5.1f}"
        lines.append(
            f"{r.scenario:<16} {r.strategy:<8} {r.bn_mode:<6} {accuracy:>24} {r.wall_seconds:7.1f} "
            f"{r.cpu_seconds:7.1f} {r.peak_rss_mb:8.0f} {r.epochs:6d} {r.time_ratio_to_full:9.2f}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 training samples, 2 epochs (CI)")
    parser.add_argument("--data", help=".npz with x_train/y_train/x_test/y_test (real data, e.g. CIFAR-10)")
    parser.add_argument("--checkpoint", help="base model: a tbftd checkpoint or a bare state dict (default: the shipped model)")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience (default: off, for timing)")
    parser.add_argument("--bn-mode", choices=("adapt", "frozen", "both"), default="adapt")
    parser.add_argument("--drifts", nargs="+", choices=DRIFTS, default=list(DRIFTS))
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--corruption", default="gaussian_noise")
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    parser.add_argument("--json", type=Path, help="where to write the JSON (default: bench/results/finetune-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.val_size, args.test_size, args.epochs = 200, 100, 200, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = f"data {args.data}" if args.data else "generated Shapes-40 scenarios"
    model = args.checkpoint or "the shipped base model"
    print(f"fine-tuning benchmark: {source}, {model}, {args.train_size} training samples, "
          f"{args.epochs} epochs, {args.threads} threads", file=sys.stderr)
    started = time.perf_counter()
    runs = run_benchmark(args)
    table = format_table(runs)
    print(table)
    from bench import run_meta

    out = args.json or Path(__file__).parent / "results" / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": run_meta.machine(),
        "settings": run_meta.settings(args),
        "total_seconds": time.perf_counter() - started,
    }
    out.write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=2, default=str))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
