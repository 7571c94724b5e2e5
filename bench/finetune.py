"""Fine-tuning benchmark, the paper's table in one command: every block per drift type, side by side.

For each suite (the generated Shapes-40 with the shipped base model, and the real CIFAR-10 subset
with the paper's checkpoint from ``../shared/reference`` when it is there) and each drift type
(input: a corruption; feature: new sub-populations, Shapes-40 only; output: flipped labels), a fresh
copy of the base model fine-tunes the same samples with each strategy (``block1``, ``block2``,
``block3``, ``fc``, ``full``, ``bn``) in each *arm*:

- ``paper``: tbftd's engine with the paper's settings (``device.profiles``, profile ``paper``);
- ``tbftd``: the daemon's default profile, what a hinted job runs;
- ``seed``: the paper's own loop (``bench/seed_loop.py``), with ``--seed-loop``;
- ``...+nchw``: an engine arm in the default NCHW layout instead of channels-last, with ``--layouts both``.

Each run is a spawned process of its own (its peak RSS is its own), at ``--threads`` torch threads
(default 1: CPU seconds comparable between runs on a shared machine). Energy is CPU seconds (process
time; no meter here). Tables: every run; the paper's table (accuracy after and CPU s per block, and
whether the paper's ordering holds: ``block1`` best or within a point for input drift, ``block3`` for
feature drift, ``fc`` best for output drift); and the ratios side by side (``tbftd``/``paper``,
``tbftd``/``seed``, channels-last/default). JSON with every figure is written beside.

    python bench/finetune.py                          # both suites, paper and tbftd arms
    python bench/finetune.py --quick                  # 200 samples, 2 epochs at most (CI)
    python bench/finetune.py --seed-loop --layouts both --repeats 3 --strategies block1 block3 fc full
    python bench/finetune.py --suites cifar10 --drifts input --corruptions all --severities 3 5 \
        --strategies block1 full
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

STRATEGIES = ("block1", "block2", "block3", "fc", "full", "bn")
BLOCKS = ("block1", "block2", "block3", "fc", "full")
DRIFTS = ("input", "feature", "output")
#: The block the paper maps each drift type to, and which it finds best there.
PAPER_BLOCK = {"input": "block1", "feature": "block3", "output": "fc"}
#: "Within a point": the paper's ordering holds when its block is at most this far below the best.
WITHIN_POINTS = 1.0


@dataclass
class Run:
    """One strategy in one arm on one scenario (CPU and wall seconds: the median over repeats)."""

    suite: str
    drift: str
    scenario: str
    strategy: str
    arm: str
    accuracy_before: float
    accuracy_after: float
    val_accuracy_after: float
    wall_seconds: float
    cpu_seconds: float
    cpu_seconds_all: list[float]
    peak_rss_mb: float
    epochs: int
    best_epoch: int
    cache: str
    cpu_ratio_to_full: float = float("nan")


@dataclass(frozen=True)
class Suite:
    """A data source and the base model it is measured with."""

    name: str
    data: str | None
    checkpoint: str | None


def _job(arrays_path: str, checkpoint: str | None, strategy: str, arm: dict[str, Any], threads: int) -> dict[str, Any]:
    """Runs in a fresh process: load the model and samples, fine-tune in ``arm``, evaluate on the test split."""
    import torch

    from device.checkpoint import load_checkpoint
    from device.finetune import FinetuneConfig, finetune
    from device.inference import predict
    from device.profiles import profile_settings
    from device.samples import Samples
    from device.shipped import load_shipped_base_model

    torch.set_num_threads(threads)
    with np.load(arrays_path) as data:
        arrays = {k: data[k] for k in data.files}
    model = load_checkpoint(checkpoint).model if checkpoint else load_shipped_base_model().model
    test_before = float((predict(model, arrays["test_x"]).classes == arrays["test_y"]).mean())
    if arm["loop"] == "seed":
        from bench.seed_loop import seed_finetune

        as_float = [torch.as_tensor(arrays[k]).float().div_(255) for k in ("train_x", "val_x")]
        labels = [torch.as_tensor(arrays[k]).long() for k in ("train_y", "val_y")]
        run = seed_finetune(model, strategy, as_float[0], labels[0], as_float[1], labels[1],
                            epochs=arm["epochs_cap"] or 10, seed=arm["seed"])
        figures = {"val_accuracy_after": run.val_accuracy, "wall_seconds": run.seconds, "cpu_seconds": run.cpu_seconds,
                   "epochs": run.epochs_run, "best_epoch": run.best_epoch, "cache": "none"}
    else:
        settings = dict(profile_settings(arm["profile"], strategy))
        if arm["epochs_cap"]:
            settings["epochs"] = min(settings.get("epochs", 10), arm["epochs_cap"])
        config = FinetuneConfig(**{**settings, "channels_last": arm["channels_last"], "seed": arm["seed"]})
        train = Samples.from_arrays(arrays["train_x"], arrays["train_y"])
        val = Samples.from_arrays(arrays["val_x"], arrays["val_y"])
        result = finetune(model, strategy, train, val, config)
        figures = {"val_accuracy_after": result.accuracy_after, "wall_seconds": result.seconds,
                   "cpu_seconds": result.cpu_seconds, "epochs": result.epochs_run, "best_epoch": result.best_epoch,
                   "cache": result.cache}
    test_after = float((predict(model, arrays["test_x"]).classes == arrays["test_y"]).mean())
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"accuracy_before": test_before, "accuracy_after": test_after, "peak_rss_mb": peak_kb / 1024, **figures}


def find_suites(args: argparse.Namespace) -> list[Suite]:
    """The suites to run; the real one is the reference data unless ``--data`` names other data."""
    suites = []
    if "shapes" in args.suites:
        suites.append(Suite("shapes", None, None))
    if "cifar10" in args.suites:
        from bench.run_meta import real_data

        found = real_data(args.reference, args.data, args.checkpoint)
        if found is not None:
            suites.append(Suite("cifar10", *found))
    return suites


def build_scenarios(suite: Suite, args: argparse.Namespace) -> list[Any]:
    """The drifted sample sets of one suite."""
    from drift.scenarios import Split, array_scenario, shapes_scenario

    # One input scenario per corruption and severity; feature and output drift once each.
    shifts = [(d, c, s) for d in args.drifts
              for c, s in ([(c, s) for c in args.corruptions for s in args.severities] if d == "input" else [(None, 5)])]
    many = len(args.corruptions) * len(args.severities) > 1
    if suite.data is None:
        scenarios = [shapes_scenario(d, args.train_size, args.val_size, args.test_size, seed=args.seed,
                                     corruption=c or "gaussian_noise", severity=s) for d, c, s in shifts]
    else:
        from drift.loaders import load_npz

        pool = Split(*load_npz(suite.data, split="train"))
        held_out = Split(*load_npz(suite.data, split="test"))
        held_out = Split(held_out.x[:args.test_size], held_out.y[:args.test_size])
        scenarios = [array_scenario(d, pool, held_out, args.train_size, seed=args.seed, corruption=c or "gaussian_noise",
                                    severity=s, name=suite.name, val_size=args.val_size)
                     for d, c, s in shifts if d != "feature"]
    if many:  # name input scenarios by their corruption
        scenarios = [replace(sc, name=f"{sc.name}/{sc.description.split(' at severity ')[0]}-{sc.description[-1]}")
                     if sc.drift.value == "input" else sc for sc in scenarios]
    return scenarios


def arms(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The arms every strategy runs in."""
    chosen = []
    for profile in args.profiles:
        for layout in args.layouts:
            chosen.append({"name": profile + ("+nchw" if layout == "nchw" else ""), "loop": "engine",
                           "profile": profile, "channels_last": layout == "channels-last"})
    if args.seed_loop:
        chosen.append({"name": "seed", "loop": "seed", "profile": "paper", "channels_last": False})
    for arm in chosen:
        arm.update(epochs_cap=2 if args.quick else None, seed=args.seed)
    return chosen


def run_benchmark(args: argparse.Namespace) -> list[Run]:
    """Every (suite, scenario, strategy, arm) in a spawned process, one after another, ``--repeats`` times."""
    context = multiprocessing.get_context("spawn")
    # Threads that spin while they wait burn CPU seconds whenever another process holds a core.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="tbftd-bench-") as workdir:
        for suite in find_suites(args):
            for scenario in build_scenarios(suite, args):
                arrays_path = os.path.join(workdir, "arrays.npz")
                np.savez(arrays_path, train_x=scenario.train.x, train_y=scenario.train.y, val_x=scenario.val.x,
                         val_y=scenario.val.y, test_x=scenario.test.x, test_y=scenario.test.y)
                for strategy in args.strategies:
                    for arm in arms(args):
                        if arm["loop"] == "seed" and strategy == "bn":
                            continue  # the seed has no statistics-only strategy
                        if same_as_paper(arm, strategy, args):
                            continue  # this profile runs the paper's settings here: measured once, in that arm
                        repeats = []
                        for _ in range(args.repeats):
                            with context.Pool(1) as pool:
                                repeats.append(pool.apply(_job, (arrays_path, suite.checkpoint, strategy, arm, args.threads)))
                        first = repeats[0]
                        run = Run(suite.name, scenario.drift.value, scenario.name, strategy, arm["name"],
                                  first["accuracy_before"], first["accuracy_after"], first["val_accuracy_after"],
                                  statistics.median(r["wall_seconds"] for r in repeats),
                                  statistics.median(r["cpu_seconds"] for r in repeats),
                                  [r["cpu_seconds"] for r in repeats], max(r["peak_rss_mb"] for r in repeats),
                                  first["epochs"], first["best_epoch"], first["cache"])
                        runs.append(run)
                        print(f"  {scenario.name:<16} {strategy:<7} {arm['name']:<9} {100 * run.accuracy_before:5.1f} → "
                              f"{100 * run.accuracy_after:5.1f}  {run.cpu_seconds:7.1f} cpu s  {run.epochs} epochs",
                              file=sys.stderr, flush=True)
    for run in runs:
        full = find(runs, run.scenario, "full", "paper") or find(runs, run.scenario, "full", run.arm)
        if full is not None and full.cpu_seconds > 0:
            run.cpu_ratio_to_full = run.cpu_seconds / full.cpu_seconds
    return runs


def same_as_paper(arm: dict[str, Any], strategy: str, args: argparse.Namespace) -> bool:
    """Whether ``arm`` would repeat the paper arm's run of ``strategy`` (its profile sets nothing else)."""
    from device.profiles import profile_settings

    return (arm["loop"] == "engine" and arm["profile"] != "paper" and "paper" in args.profiles
            and not profile_settings(arm["profile"], strategy))


def find(runs: list[Run], scenario: str, strategy: str, arm: str) -> Run | None:
    """The run of ``strategy`` in ``arm`` on ``scenario``, if measured."""
    return next((r for r in runs if (r.scenario, r.strategy, r.arm) == (scenario, strategy, arm)), None)


# ---------------------------------------------------------------------------------------------
# Tables


def format_runs(runs: list[Run]) -> str:
    """Every run as a fixed-width text table."""
    header = (f"{'scenario':<16} {'strategy':<8} {'arm':<9} {'accuracy before → after':>24} {'wall s':>7} "
              f"{'cpu s':>7} {'peak MB':>8} {'epochs':>6} {'cpu/full':>8}")
    lines = [header, "-" * len(header)]
    for r in runs:
        accuracy = f"{100 * r.accuracy_before:5.1f} → {100 * r.accuracy_after:5.1f}"
        lines.append(f"{r.scenario:<16} {r.strategy:<8} {r.arm:<9} {accuracy:>24} {r.wall_seconds:7.1f} "
                     f"{r.cpu_seconds:7.1f} {r.peak_rss_mb:8.0f} {r.epochs:6d} {r.cpu_ratio_to_full:8.2f}")
    return "\n".join(lines)


def paper_table(runs: list[Run], arm: str) -> tuple[str, list[dict[str, Any]]]:
    """Accuracy after (and CPU s relative to full) per block and drift type in ``arm``, and the
    paper's ordering judged on it."""
    verdicts = []
    lines = [f"{'scenario':<16} {'before':>6} " + " ".join(f"{b:>13}" for b in BLOCKS) + "  paper's ordering",
             "-" * (24 + 14 * len(BLOCKS) + 18)]
    for scenario in dict.fromkeys(r.scenario for r in runs if r.arm == arm):
        row = {b: find(runs, scenario, b, arm) for b in BLOCKS}
        measured = {b: r for b, r in row.items() if r is not None}
        if not measured:
            continue
        drift = next(iter(measured.values())).drift
        cells = [f"{100 * r.accuracy_after:5.1f} ({r.cpu_ratio_to_full:4.2f})" if r else f"{'-':>13}" for r in row.values()]
        chosen = PAPER_BLOCK[drift]
        singles = {b: r for b, r in measured.items() if b != "full"}
        verdict = "-"
        if chosen in singles and len(singles) > 1:
            best = max(singles.values(), key=lambda r: r.accuracy_after)
            gap = 100 * (best.accuracy_after - singles[chosen].accuracy_after)
            holds = gap <= WITHIN_POINTS + 1e-9 if drift != "output" else best.strategy == chosen
            verdict = (f"{'holds' if holds else 'FAILS'}: {chosen} "
                       + ("best" if best.strategy == chosen else f"{gap:.1f} under {best.strategy}"))
            verdicts.append({"scenario": scenario, "drift": drift, "block": chosen, "best": best.strategy,
                             "points_under_best": gap, "holds": holds})
        before = next(iter(measured.values())).accuracy_before
        lines.append(f"{scenario:<16} {100 * before:6.1f} " + " ".join(f"{c:>13}" for c in cells) + f"  {verdict}")
    return "\n".join(lines), verdicts


def ratio_table(runs: list[Run], arm: str, against: str) -> str:
    """``arm`` against ``against``, strategy by strategy: CPU seconds' ratio and accuracy difference."""
    lines = [f"{'scenario':<16} {'strategy':<8} {arm + ' / ' + against:>16} {'range':>11} {'points':>7}",
             "-" * 62]
    for r in runs:
        if r.arm != arm:
            continue
        other = find(runs, r.scenario, r.strategy, against)
        if other is None or other.cpu_seconds <= 0:
            continue
        # With repeats, the spread of the ratio: fastest over slowest either way.
        low = min(r.cpu_seconds_all) / max(other.cpu_seconds_all)
        high = max(r.cpu_seconds_all) / min(other.cpu_seconds_all)
        points = 100 * (r.accuracy_after - other.accuracy_after)
        lines.append(f"{r.scenario:<16} {r.strategy:<8} {r.cpu_seconds / other.cpu_seconds:16.2f} "
                     f"{low:5.2f}–{high:<5.2f} {points:+7.1f}")
    return "\n".join(lines) if len(lines) > 2 else ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="200 training samples, at most 2 epochs, block1, fc and full unless --strategies (CI)")
    parser.add_argument("--suites", nargs="+", choices=("shapes", "cifar10"), default=["shapes", "cifar10"])
    from bench.run_meta import DEFAULT_REFERENCE, REFERENCE_CHECKPOINT, REFERENCE_DATA

    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                        help=f"folder with {REFERENCE_DATA} and {REFERENCE_CHECKPOINT} (default: {DEFAULT_REFERENCE})")
    parser.add_argument("--data", help="real data instead of the reference subset: .npz with x_train/y_train/x_test/y_test")
    parser.add_argument("--checkpoint", help="base model of the real data: a tbftd checkpoint or a bare state dict")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--test-size", type=int, default=1000, help="test images (the CIFAR-10 subset has 846)")
    parser.add_argument("--profiles", nargs="+", choices=("paper", "tbftd"), default=["paper", "tbftd"])
    parser.add_argument("--layouts", choices=("channels-last", "nchw", "both"), default="channels-last",
                        help="memory layout of the engine's runs (the engine's default: channels-last)")
    parser.add_argument("--seed-loop", action="store_true", help="add the paper's own loop as an arm")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each arm (CPU s: the median)")
    parser.add_argument("--drifts", nargs="+", choices=DRIFTS, default=list(DRIFTS))
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES)
    parser.add_argument("--corruptions", nargs="+", default=["gaussian_noise"], metavar="NAME",
                        help="input drift: one scenario per corruption and severity ('all': every one drift/ makes)")
    parser.add_argument("--severities", nargs="+", type=int, default=[5], choices=range(1, 6), metavar="1..5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--json", type=Path, help="where to write the JSON (default: bench/results/finetune-<time>.json)")
    args = parser.parse_args(argv)
    args.layouts = ["channels-last", "nchw"] if args.layouts == "both" else [args.layouts]
    if args.corruptions == ["all"]:
        from drift.corruptions import corruption_names

        args.corruptions = list(corruption_names())
    if args.strategies is None:
        args.strategies = ["block1", "fc", "full"] if args.quick else list(STRATEGIES)
    if args.quick:
        args.train_size, args.val_size, args.test_size = 200, 100, 200
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"fine-tuning benchmark: suites {', '.join(args.suites)}, {args.train_size}/{args.val_size}/"
          f"{args.test_size} train/val/test, arms {', '.join(a['name'] for a in arms(args))}, "
          f"{args.threads} thread(s), {args.repeats} repeat(s)", file=sys.stderr)
    started = time.perf_counter()
    load_before = os.getloadavg()
    runs = run_benchmark(args)
    print("Energy is CPU seconds (process time; no meter). cpu/full: against full in the paper arm.\n")
    print(format_runs(runs))
    verdicts: dict[str, list[dict[str, Any]]] = {}
    for arm in dict.fromkeys(r.arm for r in runs):
        table, verdicts[arm] = paper_table(runs, arm)
        print(f"\nThe paper's table, arm {arm}: test accuracy after (CPU s / full's in the paper arm)\n{table}")
    for arm, against in (("tbftd", "paper"), ("tbftd", "seed"), ("paper", "seed"), ("paper", "paper+nchw"),
                         ("tbftd", "tbftd+nchw")):
        table = ratio_table(runs, arm, against)
        if table:
            print(f"\n{arm} against {against}: CPU seconds' ratio and accuracy points\n{table}")
    load_after = os.getloadavg()
    print(f"\n{len(runs)} runs in {time.perf_counter() - started:.0f} s; load average (1, 5, 15 min) "
          f"{', '.join(f'{v:.2f}' for v in load_before)} before, {', '.join(f'{v:.2f}' for v in load_after)} after")
    from bench import run_meta

    out = args.json or Path(__file__).parent / "results" / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": run_meta.machine(), "settings": run_meta.settings(args), "energy_unit": "cpu_seconds",
            "total_seconds": time.perf_counter() - started, "load_average_before": load_before,
            "load_average_after": load_after}
    out.write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs], "paper_ordering": verdicts},
                              indent=2, default=str))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
