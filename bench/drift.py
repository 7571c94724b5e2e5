"""Drift benchmark: automatic detection and adaptation against every single block and ``full``.

For every scenario of the suite (:mod:`drift.suite`: input corruptions at severities 3 and 5, label
maps, sub-population shifts, composites, no-drift controls) the same drifted samples go to:

- ``auto``: :func:`drift.detect.detect` on the training samples, then :func:`drift.strategy.adapt`
  with the ladder of the detected type (nothing at all when it says ``none``);
- each single strategy ``block1``, ``block2``, ``block3``, ``fc``, ``bn`` (the best of them by test
  accuracy is the *best single block*), and ``full``.

Each starts from a fresh copy of the base model; accuracy is measured on held-out drifted test
samples that no strategy sees. Energy is **CPU seconds** (process time: there is no meter here):
for ``auto`` detection included. Each scenario runs in its own spawned process, its strategies one
after another, so every CPU-second figure is that strategy's alone; the children's OpenMP threads
wait passively (``OMP_WAIT_POLICY=PASSIVE``), because on a shared machine busy-waiting threads
doubled the CPU seconds of the same job. No-drift controls run ``auto`` only. One table per scenario, then a summary against the issue's targets; JSON with every figure.

    python bench/drift.py                    # the full Shapes-40 suite
    python bench/drift.py --quick            # one scenario of each kind and a control (CI)
    python bench/drift.py --scenarios input/fog composite/
    python bench/drift.py --data ../shared/reference/cifar10-subset.npz \\
        --checkpoint ../shared/reference/tbft-resnet26-cifar10.pth
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: The single strategies the automatic choice is measured against; ``full`` is measured besides.
SINGLE_STRATEGIES = ("block1", "block2", "block3", "fc", "bn")
#: ``full`` with the small batches and few epochs of the ladder's block1 rung: not a target, but it
#: shows how much of auto's saving the rung settings alone would give full fine-tuning.
FULL_AT_RUNG_SETTINGS = "full16"
#: The job a drift hint starts: the block of the scenario's true drift type (the paper's map) with
#: the daemon's default fine-tuning profile. Judged against the paper-settings block and ``full``.
HINTED = "hinted"
BASELINES = (*SINGLE_STRATEGIES, "full", FULL_AT_RUNG_SETTINGS, HINTED)
#: The block a hint of each drift type fine-tunes (``drift.types``' default map).
HINT_BLOCK = {"input": "block1", "feature": "block3", "output": "fc"}
#: The issue's hinted-job targets: within a point of both references on this share of input
#: scenarios, and the hinted job's CPU seconds against ``full`` per drift type.
HINTED_WITHIN_TARGET = 0.90
HINTED_RATIO_TARGETS = {"input": 0.35, "feature": 0.35, "output": 0.10}
HINTED_MEAN_RATIO_TARGET = 0.25

#: The issue's targets.
DETECTION_TARGET = 0.90
WITHIN_BEST_TARGET = 0.90
WITHIN_BEST_POINTS = 1.0
ENERGY_RATIO_TARGET = 0.25
#: Detection may cost at most this share of a full fine-tune of the same samples, on every scenario:
#: of one that runs its configured epochs, since no detector can know beforehand that early stopping
#: would end it sooner (the ratio to ``full`` as it ran is shown beside).
DETECTION_COST_TARGET = 0.05


@dataclass
class StrategyRun:
    """One baseline strategy on one scenario. Accuracies are fractions; ``cpu_seconds`` is process time."""

    strategy: str
    accuracy_after: float
    val_accuracy_after: float
    cpu_seconds: float
    wall_seconds: float
    epochs: int


@dataclass
class AutoRun:
    """Detection then adaptation on one scenario; ``cpu_seconds`` = detection + adaptation."""

    detected: str
    confidence: float
    rule: str
    probe_used: bool
    steps: list[dict[str, Any]]
    accuracy_after: float
    val_accuracy_after: float
    detect_cpu_seconds: float
    adapt_cpu_seconds: float
    cpu_seconds: float
    wall_seconds: float
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def ran(self) -> str:
        """The strategies that ran, in order; a reverted one (validation did not improve) ends in ``*``."""
        if not self.steps:
            return "-"
        return "→".join(step["strategy"] + ("" if step["kept"] else "*") for step in self.steps)


@dataclass
class ScenarioResult:
    """Everything measured on one scenario, and how it compares."""

    name: str
    true_type: str
    components: list[str]
    description: str
    accuracy_before: float
    auto: AutoRun
    baselines: dict[str, StrategyRun]
    detector_version: dict[str, str] = field(default_factory=dict)
    finished_at: str = ""
    best_single: str | None = None
    detection_correct: bool = False
    within_best: bool | None = None
    cpu_ratio_to_full: float | None = None
    detection_ratio_to_full: float | None = None
    detection_ratio_to_configured_full: float | None = None

    def judge(self, configured_epochs: int) -> None:
        """Fill in the comparisons from the measurements (``configured_epochs``: the baselines' setting)."""
        self.detection_correct = self.auto.detected == self.true_type
        singles = [self.baselines[s] for s in SINGLE_STRATEGIES if s in self.baselines]
        if singles:
            # Ties go to the cheaper strategy: it is the one a sensible choice would be held to.
            best = max(singles, key=lambda run: (run.accuracy_after, -run.cpu_seconds))
            self.best_single = best.strategy
            self.within_best = 100 * (best.accuracy_after - self.auto.accuracy_after) <= WITHIN_BEST_POINTS + 1e-9
        full = self.baselines.get("full")
        if full is not None and full.cpu_seconds > 0:
            self.cpu_ratio_to_full = self.auto.cpu_seconds / full.cpu_seconds
            self.detection_ratio_to_full = self.auto.detect_cpu_seconds / full.cpu_seconds
            per_epoch = full.cpu_seconds / max(1, full.epochs)
            self.detection_ratio_to_configured_full = self.auto.detect_cpu_seconds / (per_epoch * configured_epochs)


# ---------------------------------------------------------------------------------------------
# Child processes


def _load_checkpoint(checkpoint: str | None, num_classes: int) -> Any:
    from device.checkpoint import load_checkpoint
    from device.model import ModelConfig
    from device.shipped import load_shipped_base_model

    if checkpoint:
        return load_checkpoint(checkpoint, config=ModelConfig(num_classes=num_classes))
    return load_shipped_base_model()


def _source_job(arrays_path: str, checkpoint: str | None, mode: str, threads: int) -> dict[str, Any]:
    """Runs in a fresh process: the source statistics ``auto`` compares against (not any scenario's cost).

    ``checkpoint``: those the checkpoint carries, as the daemon uses them; ``samples``: computed on
    clean source images, with the accuracy on clean held-out ones; ``buffers``: the BatchNorm
    buffers alone (all a bare state dict offers). ``auto``: the checkpoint's if it has them, else
    ``samples``. The result says which was used under ``origin``.
    """
    import torch

    from device.samples import Samples
    from drift.source_stats import CHECKPOINT_KEY, SourceStatistics, source_statistics_of

    torch.set_num_threads(threads)
    with np.load(arrays_path) as data:
        arrays = {k: data[k] for k in data.files}
    loaded = _load_checkpoint(checkpoint, int(arrays["num_classes"]))
    model = loaded.model
    if mode == "auto":
        mode = "checkpoint" if CHECKPOINT_KEY in loaded.extra else "samples"
    if mode == "checkpoint":
        if CHECKPOINT_KEY not in loaded.extra:
            raise SystemExit("--source checkpoint: the checkpoint carries no source statistics")
        statistics = source_statistics_of(loaded.extra, model)
        origin = "carried by the checkpoint"
    elif mode == "buffers":
        statistics = SourceStatistics.from_model(model)
        origin = "BatchNorm buffers only, no accuracy"
    else:
        accuracy = _test_accuracy(model, arrays["accuracy_x"], arrays["accuracy_y"])
        statistics = SourceStatistics.from_model(model, Samples.from_arrays(arrays["x"], arrays["y"]), accuracy=accuracy)
        origin = f"{len(arrays['y'])} clean source images, accuracy on {len(arrays['accuracy_y'])} held-out ones"
    return statistics.to_dict() | {"origin": origin}


def _test_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    from device.inference import predict

    return float((predict(model, x).classes == y).mean())


def _scenario_job(
    arrays_path: str,
    checkpoint: str | None,
    source: dict[str, Any],
    strategies: list[str],
    finetune_settings: dict[str, Any],
    seed: int,
    threads: int,
    true_type: str = "none",
) -> dict[str, Any]:
    """Runs in a fresh process: ``auto`` and then each baseline on a fresh copy of the base model."""
    import torch

    from device.finetune import FinetuneConfig, finetune
    from device.profiles import DEFAULT_PROFILE, profile_settings
    from device.samples import Samples
    from drift.detect import DetectorConfig, detect
    from drift.source_stats import SourceStatistics
    from drift.strategy import AdaptConfig, adapt

    torch.set_num_threads(threads)
    with np.load(arrays_path) as data:
        arrays = {k: data[k] for k in data.files}
    base = _load_checkpoint(checkpoint, int(arrays["num_classes"])).model
    statistics = SourceStatistics.from_dict(source)
    train = Samples.from_arrays(arrays["train_x"], arrays["train_y"])
    val = Samples.from_arrays(arrays["val_x"], arrays["val_y"])
    test_x, test_y = arrays["test_x"], arrays["test_y"]
    config = FinetuneConfig(**finetune_settings)
    accuracy_before = _test_accuracy(base, test_x, test_y)
    # One throwaway step first: the first backward pass of a process sets up kernels, which
    # would otherwise be charged to whichever strategy ran first.
    finetune(copy.deepcopy(base), "full", train.subset(torch.arange(min(32, len(train)))), val, FinetuneConfig(epochs=1))

    model = copy.deepcopy(base)
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    detection = detect(model, train, statistics, DetectorConfig(seed=seed))
    detect_cpu = time.process_time() - cpu_started
    steps: list[dict[str, Any]] = []
    val_after = float("nan")
    if detection.drift_type != "none":
        result = adapt(model, train, val, detection.drift_type, statistics, AdaptConfig(finetune=config),
                       detection=detection)
        steps = [asdict(step) for step in result.steps]
        val_after = result.accuracy_after
    cpu_seconds = time.process_time() - cpu_started
    auto = {
        "detected": detection.drift_type,
        "confidence": detection.confidence,
        "rule": str(detection.evidence.get("rule", "")),
        "probe_used": detection.probe_used,
        "steps": steps,
        "accuracy_after": _test_accuracy(model, test_x, test_y),
        "val_accuracy_after": val_after,
        "detect_cpu_seconds": detect_cpu,
        "adapt_cpu_seconds": cpu_seconds - detect_cpu,
        "cpu_seconds": cpu_seconds,
        "wall_seconds": time.perf_counter() - wall_started,
        "evidence": json.loads(json.dumps(detection.evidence, default=str)),
    }

    baselines = {}
    for strategy in strategies:
        model = copy.deepcopy(base)
        block, block_config = strategy, config
        if strategy == FULL_AT_RUNG_SETTINGS:
            block, block_config = "full", AdaptConfig(finetune=config).finetune_for("block1")
        elif strategy == HINTED:
            block = HINT_BLOCK[true_type]
            hinted = dict(profile_settings(DEFAULT_PROFILE, block))
            # The run's epoch setting caps the hinted job as it caps the baselines (--quick).
            hinted["epochs"] = min(hinted.get("epochs", config.epochs), config.epochs)
            block_config = FinetuneConfig(**{**hinted, "seed": seed})
        wall_started, cpu_started = time.perf_counter(), time.process_time()
        outcome = finetune(model, block, train, val, block_config)
        baselines[strategy] = {
            "strategy": strategy,
            "accuracy_after": _test_accuracy(model, test_x, test_y),
            "val_accuracy_after": outcome.accuracy_after,
            "cpu_seconds": time.process_time() - cpu_started,
            "wall_seconds": time.perf_counter() - wall_started,
            "epochs": outcome.epochs_run,
        }
    import drift.detect
    import drift.strategy

    # Each child imports the detector afresh: a file edited during a run would split the suite.
    versions = {module.__name__: _digest(Path(str(module.__file__))) for module in (drift.detect, drift.strategy)}
    return {"accuracy_before": accuracy_before, "auto": auto, "baselines": baselines, "versions": versions}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The run


def build_suite(args: argparse.Namespace) -> tuple[list[Any], Any, Any]:
    """The scenarios' samples, the clean source images for source statistics and those for the
    source accuracy (held out from the base model's training), generated or from ``--data``."""
    from drift import suite
    from drift.scenarios import Split

    sizes = suite.Sizes(args.train_size, args.val_size, args.test_size)
    if args.data is None:
        chosen = suite.select(suite.shapes_suite(args.quick), args.scenarios)
        # Fresh images: the base model was trained on other seeds, so they are held out as well.
        source = suite.shapes_source(args.source_size, args.seed)
        return [suite.build_shapes(s, sizes, args.seed) for s in chosen], source, source
    from drift.loaders import load_npz

    pool = Split(*load_npz(args.data, split="train"))
    held_out = Split(*load_npz(args.data, split="test"))
    print("note: real data has no sub-population labels: no feature-drift scenarios", file=sys.stderr)
    chosen = suite.select(suite.data_suite(args.quick), args.scenarios)
    built = [suite.build_arrays(s, pool, held_out, sizes, args.seed, args.source_size) for s in chosen]
    # The training split is the checkpoint's own training data: its accuracy there says nothing.
    accuracy_images = suite.array_source_accuracy_split(held_out, sizes, args.seed)
    if len(accuracy_images) < 100:
        raise SystemExit(f"--data: only {len(accuracy_images)} test images are left for the source accuracy "
                         f"after {args.val_size} validation and {args.test_size} test images; lower --test-size")
    return built, suite.array_source(pool, args.source_size, args.seed), accuracy_images


OnResult = Callable[[ScenarioResult, list[ScenarioResult], dict[str, Any]], None]


def run_benchmark(args: argparse.Namespace, on_result: OnResult | None = None) -> tuple[list[ScenarioResult], dict[str, Any]]:
    """Source statistics once, then every scenario in its own spawned process, one after another.

    ``on_result(result, results so far, source statistics)`` is called as each scenario finishes.
    """
    # Threads that spin while waiting for each other burn CPU time whenever another process holds a
    # core: measured here, the same job took twice the CPU seconds under load. Set before the
    # children start, so that their OpenMP runtime reads it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    context = multiprocessing.get_context("spawn")
    scenarios, source_images, accuracy_images = build_suite(args)
    finetune_settings = {"epochs": args.epochs, "patience": args.patience, "bn_mode": "adapt", "seed": args.seed}
    results: list[ScenarioResult] = []
    versions: set[tuple[tuple[str, str], ...]] = set()
    with tempfile.TemporaryDirectory(prefix="tbftd-bench-drift-") as workdir:
        num_classes = scenarios[0].num_classes if scenarios else 10
        source_path = os.path.join(workdir, "source.npz")
        np.savez(source_path, x=source_images.x, y=source_images.y, accuracy_x=accuracy_images.x,
                 accuracy_y=accuracy_images.y, num_classes=num_classes)
        with context.Pool(1) as pool:
            source = pool.apply(_source_job, (source_path, args.checkpoint, args.source, args.threads))
        print(f"  source statistics: {source['origin']}; source accuracy {_percent(source['accuracy'])}%",
              file=sys.stderr, flush=True)
        for data in scenarios:
            scenario = data.scenario
            arrays_path = os.path.join(workdir, "arrays.npz")
            np.savez(arrays_path, train_x=data.train.x, train_y=data.train.y, val_x=data.val.x, val_y=data.val.y,
                     test_x=data.test.x, test_y=data.test.y, num_classes=data.num_classes)
            # The controls need no baselines: the only right answer there is to run nothing.
            strategies = [] if scenario.true_type == "none" else list(args.strategies)
            # A hint names one drift type: composites have no hinted job to compare.
            hintable = len(scenario.components) <= 1 and scenario.true_type in HINT_BLOCK
            strategies = [s for s in strategies if s != HINTED or hintable]
            with context.Pool(1) as pool:
                figures = pool.apply(_scenario_job, (arrays_path, args.checkpoint, source, strategies,
                                                     finetune_settings, args.seed, args.threads, scenario.true_type))
            result = ScenarioResult(
                name=scenario.name,
                true_type=scenario.true_type,
                components=list(scenario.components),
                description=scenario.description,
                accuracy_before=figures["accuracy_before"],
                auto=AutoRun(**figures["auto"]),
                baselines={k: StrategyRun(**v) for k, v in figures["baselines"].items()},
                detector_version=figures["versions"],
                finished_at=time.strftime("%H:%M:%S"),
            )
            result.judge(args.epochs)
            versions.add(tuple(sorted(figures["versions"].items())))
            source["detector_versions"] = [dict(v) for v in sorted(versions)]
            results.append(result)
            print(f"  {result.name:<42} detected {result.auto.detected:<8} ran {result.auto.ran:<16} "
                  f"{100 * result.accuracy_before:5.1f} → {100 * result.auto.accuracy_after:5.1f}  "
                  f"{result.auto.cpu_seconds:6.1f} cpu s", file=sys.stderr, flush=True)
            if on_result is not None:
                on_result(result, results, source)
    if len(versions) > 1:
        print(f"WARNING: the detector or the ladders changed during the run ({len(versions)} versions): "
              "rerun for figures of one version", file=sys.stderr)
    return results, source


# ---------------------------------------------------------------------------------------------
# Tables


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _true_type(result: ScenarioResult) -> str:
    if len(result.components) > 1:
        return f"{result.true_type} (of {'+'.join(result.components)})"
    return result.true_type


def format_scenario(result: ScenarioResult) -> str:
    """One scenario's table: the base model, ``auto``, each baseline, and the verdict."""
    full = result.baselines.get("full")
    full_cpu = full.cpu_seconds if full is not None else None

    def share(cpu: float) -> str:
        return _ratio(cpu / full_cpu) if full_cpu else "-"

    header = f"{'strategy':<8} {'detected':<15} {'ran':<16} {'test acc %':>10} {'cpu s':>7} {'cpu/full':>8}"
    lines = [f"{result.name} — {result.description} — true type: {_true_type(result)}", header, "-" * len(header)]
    lines.append(f"{'base':<8} {'':<15} {'':<16} {_percent(result.accuracy_before):>10} {'-':>7} {'-':>8}")
    auto = result.auto
    detected = f"{auto.detected} ({auto.confidence:.2f})" + ("ᵖ" if auto.probe_used else "")
    lines.append(f"{'auto':<8} {detected:<15} {auto.ran:<16} {_percent(auto.accuracy_after):>10} "
                 f"{auto.cpu_seconds:7.1f} {share(auto.cpu_seconds):>8}")
    for strategy in BASELINES:
        run = result.baselines.get(strategy)
        if run is None:
            continue
        mark = "  ← best single" if strategy == result.best_single else ""
        lines.append(f"{strategy:<8} {'':<15} {'':<16} {_percent(run.accuracy_after):>10} "
                     f"{run.cpu_seconds:7.1f} {share(run.cpu_seconds):>8}{mark}")
    verdict = [f"detection {'correct' if result.detection_correct else 'WRONG'} ({auto.rule})"]
    if result.true_type == "none":
        verdict.append("no job" if not auto.steps else f"RAN A JOB ({auto.ran})")
    if result.best_single is not None:
        best = result.baselines[result.best_single]
        gap = 100 * (auto.accuracy_after - best.accuracy_after)
        verdict.append(f"auto {gap:+.1f} points against {result.best_single}: "
                       f"{'within' if result.within_best else 'NOT within'} {WITHIN_BEST_POINTS:g}")
    if result.cpu_ratio_to_full is not None:
        verdict.append(f"cpu {result.cpu_ratio_to_full:.2f} of full (detection {auto.detect_cpu_seconds:.1f} s "
                       f"= {result.detection_ratio_to_configured_full:.3f} of a full fine-tune's configured epochs)")
    lines.append("→ " + "; ".join(verdict))
    return "\n".join(lines)


def format_summary(results: list[ScenarioResult]) -> str:
    """One row per scenario: the detected type, what ran, and the accuracy and CPU seconds of each side."""
    header = (f"{'scenario':<42} {'true':<8} {'detected':<8} {'ran':<16} {'auto %':>6} {'best single':>14} "
              f"{'full %':>6} {'auto s':>7} {'full s':>7} {'ratio':>5}  ok")
    lines = [header, "-" * len(header)]
    for r in results:
        best = f"{r.best_single} {_percent(r.baselines[r.best_single].accuracy_after)}" if r.best_single else "-"
        full = r.baselines.get("full")
        marks = ("d" if r.detection_correct else "·") + ("a" if r.within_best else ("·" if r.within_best is False else " "))
        lines.append(
            f"{r.name:<42} {r.true_type:<8} {r.auto.detected:<8} {r.auto.ran:<16} {_percent(r.auto.accuracy_after):>6} "
            f"{best:>14} {_percent(full.accuracy_after if full else None):>6} {r.auto.cpu_seconds:7.1f} "
            f"{_seconds(full.cpu_seconds if full else None):>7} {_ratio(r.cpu_ratio_to_full):>5}  {marks}"
        )
    lines.append("ok: d = detection correct, a = auto within 1 point of the best single block; "
                 "* after a strategy: it ran and was reverted; ᵖ: the detector's probe ran")
    return "\n".join(lines)


def format_breakdown(results: list[ScenarioResult]) -> str:
    """Per true type: scenarios, detection, within-1-point share and auto's CPU seconds against full."""
    header = f"{'true type':<10} {'scenarios':>9} {'detected':>9} {'within 1':>9} {'auto s':>8} {'full s':>8} {'ratio':>6}"
    lines = [header, "-" * len(header)]
    kinds = ["input", "feature", "output", "composite", "none"]
    for kind in kinds:
        group = [r for r in results if (len(r.components) > 1 and kind == "composite")
                 or (len(r.components) <= 1 and r.true_type == kind)]
        if not group:
            continue
        compared = [r for r in group if r.within_best is not None]
        costed = [r for r in group if "full" in r.baselines]
        auto_s = sum(r.auto.cpu_seconds for r in group) / len(group)
        full_s = sum(r.baselines["full"].cpu_seconds for r in costed) / len(costed) if costed else None
        ratio = (sum(r.auto.cpu_seconds for r in costed) / len(costed)) / full_s if costed and full_s else None
        within = f"{sum(bool(r.within_best) for r in compared)}/{len(compared)}" if compared else "-"
        lines.append(f"{kind:<10} {len(group):>9} {sum(r.detection_correct for r in group):>6}/{len(group):<2} "
                     f"{within:>9} {auto_s:8.1f} {_seconds(full_s):>8} {_ratio(ratio):>6}")
    return "\n".join(lines)


def evaluate_targets(results: list[ScenarioResult]) -> list[dict[str, Any]]:
    """The issue's targets (the controls' "no job" as part of the first, detection's cost bound last), met or
    missed, with the misses."""
    targets = []
    if results:
        correct = [r for r in results if r.detection_correct]
        share = len(correct) / len(results)
        targets.append({
            "target": f"detection correct on ≥ {DETECTION_TARGET:.0%} of scenarios",
            "measured": f"{len(correct)}/{len(results)} = {share:.1%}",
            "met": share >= DETECTION_TARGET,
            "misses": [f"{r.name} (detected {r.auto.detected})" for r in results if not r.detection_correct],
        })
    controls = [r for r in results if r.true_type == "none"]
    if controls:
        jobs = [r for r in controls if r.auto.steps]
        targets.append({
            "target": "never a job on the no-drift controls",
            "measured": f"{len(controls) - len(jobs)}/{len(controls)} ran nothing",
            "met": not jobs,
            "misses": [f"{r.name} (ran {r.auto.ran})" for r in jobs],
        })
    compared = [r for r in results if r.within_best is not None]
    if compared:
        within = [r for r in compared if r.within_best]
        share = len(within) / len(compared)
        targets.append({
            "target": f"auto within {WITHIN_BEST_POINTS:g} point of the best single block on ≥ {WITHIN_BEST_TARGET:.0%}",
            "measured": f"{len(within)}/{len(compared)} = {share:.1%} (drifted scenarios)",
            "met": share >= WITHIN_BEST_TARGET,
            "misses": [
                f"{r.name} ({100 * r.auto.accuracy_after:.1f} vs {r.best_single} "
                f"{100 * r.baselines[r.best_single].accuracy_after:.1f})"
                for r in compared if not r.within_best
            ],
        })
    costed = [r for r in results if "full" in r.baselines]
    if costed:
        auto_mean = sum(r.auto.cpu_seconds for r in costed) / len(costed)
        full_mean = sum(r.baselines["full"].cpu_seconds for r in costed) / len(costed)
        ratio = auto_mean / full_mean
        targets.append({
            "target": f"mean CPU s of auto ≤ {ENERGY_RATIO_TARGET:.0%} of full",
            "measured": f"{auto_mean:.1f} / {full_mean:.1f} s = {ratio:.1%} (drifted scenarios)",
            "met": ratio <= ENERGY_RATIO_TARGET,
            "misses": [f"{r.name} ({r.cpu_ratio_to_full:.2f})" for r in costed
                       if r.cpu_ratio_to_full is not None and r.cpu_ratio_to_full > ENERGY_RATIO_TARGET],
            "misses_are": "above the ratio",
        })
        ratios = [(r.detection_ratio_to_configured_full, r.name) for r in costed
                  if r.detection_ratio_to_configured_full is not None]
        if ratios:
            highest, where = max(ratios)
            mean = sum(ratio for ratio, _ in ratios) / len(ratios)
            as_run = max(costed, key=lambda r: r.detection_ratio_to_full or 0.0)
            targets.append({
                "target": f"detection CPU s ≤ {DETECTION_COST_TARGET:.0%} of full (its configured epochs), each",
                "measured": f"at most {highest:.1%} ({where.split('/')[-1]}), mean {mean:.1%}",
                "met": highest <= DETECTION_COST_TARGET,
                "misses": [f"{name} ({ratio:.3f})" for ratio, name in ratios if ratio > DETECTION_COST_TARGET],
                "misses_are": "above the share",
                "note": f"against full as it ran (early stopping included), at most "
                        f"{as_run.detection_ratio_to_full or 0.0:.1%} "
                        f"({as_run.name}: {as_run.baselines['full'].epochs} epochs run)",
            })
    targets.extend(hinted_targets(results))
    return targets


def hinted_targets(results: list[ScenarioResult]) -> list[dict[str, Any]]:
    """The hinted job against the paper-settings block and ``full``: accuracy on input drift, CPU
    seconds per drift type and their mean over the types measured."""
    targets: list[dict[str, Any]] = []
    hinted = [r for r in results if HINTED in r.baselines and "full" in r.baselines]
    inputs = [r for r in hinted if r.true_type == "input" and "block1" in r.baselines]
    if inputs:
        def holds(r: ScenarioResult) -> bool:
            got = r.baselines[HINTED].accuracy_after
            return all(100 * (r.baselines[k].accuracy_after - got) <= WITHIN_BEST_POINTS + 1e-9 for k in ("block1", "full"))

        held = [r for r in inputs if holds(r)]
        targets.append({
            "target": f"hinted block1 within {WITHIN_BEST_POINTS:g} point of paper block1 and of full on ≥ {HINTED_WITHIN_TARGET:.0%}",
            "measured": f"{len(held)}/{len(inputs)} = {len(held) / len(inputs):.1%} (input scenarios)",
            "met": len(held) / len(inputs) >= HINTED_WITHIN_TARGET,
            "misses": [f"{r.name} ({100 * r.baselines[HINTED].accuracy_after:.1f} vs block1 "
                       f"{100 * r.baselines['block1'].accuracy_after:.1f}, full {100 * r.baselines['full'].accuracy_after:.1f})"
                       for r in inputs if not holds(r)],
        })
    ratios: dict[str, float] = {}
    for kind, bound in HINTED_RATIO_TARGETS.items():
        group = [r for r in hinted if r.true_type == kind]
        if not group:
            continue
        ratio = sum(r.baselines[HINTED].cpu_seconds for r in group) / sum(r.baselines["full"].cpu_seconds for r in group)
        ratios[kind] = ratio
        targets.append({
            "target": f"hinted {HINT_BLOCK[kind]} CPU s ≤ {bound:.2f} of full ({kind} drift)",
            "measured": f"{ratio:.2f} over {len(group)} scenarios",
            "met": ratio <= bound,
            "misses": [f"{r.name} ({r.baselines[HINTED].cpu_seconds / r.baselines['full'].cpu_seconds:.2f})"
                       for r in group if r.baselines[HINTED].cpu_seconds > bound * r.baselines["full"].cpu_seconds],
            "misses_are": "above the ratio",
        })
    if ratios:
        mean = sum(ratios.values()) / len(ratios)
        targets.append({
            "target": f"hinted CPU s, mean over the drift types, ≤ {HINTED_MEAN_RATIO_TARGET:.2f} of full",
            "measured": f"{mean:.2f} over {', '.join(ratios)}",
            "met": mean <= HINTED_MEAN_RATIO_TARGET,
            "misses": [],
        })
    return targets


def format_reference(results: list[ScenarioResult]) -> str:
    """What ``full`` at the rungs' settings gives: how much of auto's saving the settings alone explain."""
    both = [r for r in results if "full" in r.baselines and FULL_AT_RUNG_SETTINGS in r.baselines]
    if not both:
        return ""
    mean = {k: sum(r.baselines[k].cpu_seconds for r in both) / len(both) for k in ("full", FULL_AT_RUNG_SETTINGS)}
    accuracy = {k: sum(r.baselines[k].accuracy_after for r in both) / len(both) for k in ("full", FULL_AT_RUNG_SETTINGS)}
    auto_s = sum(r.auto.cpu_seconds for r in both) / len(both)
    auto_acc = sum(r.auto.accuracy_after for r in both) / len(both)
    return (f"reference, {len(both)} drifted scenarios: {FULL_AT_RUNG_SETTINGS} (full fine-tuning in the block1 rung's "
            f"batches and epochs) {mean[FULL_AT_RUNG_SETTINGS]:.1f} cpu s = {mean[FULL_AT_RUNG_SETTINGS] / mean['full']:.2f}"
            f" of full, mean test accuracy {100 * accuracy[FULL_AT_RUNG_SETTINGS]:.1f}% (full {100 * accuracy['full']:.1f}%,"
            f" auto {100 * auto_acc:.1f}%); auto costs {auto_s / mean[FULL_AT_RUNG_SETTINGS]:.2f} of it")


def format_targets(targets: list[dict[str, Any]]) -> str:
    """The targets as a table, then the scenarios behind each miss (for the energy target: those above it)."""
    width = max((len(t["target"]) for t in targets), default=10)
    lines = [f"{'target':<{width}}  {'measured':<42} result", "-" * (width + 52)]
    for t in targets:
        lines.append(f"{t['target']:<{width}}  {t['measured']:<42} {'met' if t['met'] else 'MISSED'}")
    for t in targets:
        if t.get("note"):
            lines.append(f"{t['target']}: {t['note']}")
    for t in targets:
        if t["misses"]:
            what = t.get("misses_are", "misses")
            lines.append(f"{what} ({t['target']}): {', '.join(t['misses'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one scenario of each kind and a control, 200 training samples, 2 epochs (CI)")
    parser.add_argument("--suites", nargs="+", choices=("shapes", "cifar10"), default=["shapes", "cifar10"],
                        help="generated Shapes-40 with the shipped model, and the real CIFAR-10 subset with the paper's "
                             "checkpoint (run when found under --reference)")
    from bench.run_meta import DEFAULT_REFERENCE, REFERENCE_CHECKPOINT, REFERENCE_DATA

    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                        help=f"folder with {REFERENCE_DATA} and {REFERENCE_CHECKPOINT} (default: {DEFAULT_REFERENCE})")
    parser.add_argument("--data", help="real data instead of the reference subset: .npz with x_train/y_train/x_test/y_test")
    parser.add_argument("--checkpoint", help="base model of the real data: a tbftd checkpoint or a bare state dict")
    parser.add_argument("--scenarios", nargs="+", metavar="NAME",
                        help="run only these scenarios (a name or a prefix, e.g. input/ or composite/)")
    parser.add_argument("--train-size", type=int, default=300)
    parser.add_argument("--val-size", type=int, default=150)
    parser.add_argument("--test-size", type=int,
                        help="held-out test samples (default 1000 generated, 500 with --data): the 'within 1 point' "
                             "verdict needs a test set whose standard error is near a point (1.3 at 1000, 1.8 at 500)")
    parser.add_argument("--source", choices=("auto", "checkpoint", "samples", "buffers"), default="auto",
                        help="source statistics: the checkpoint's (as the daemon uses them), computed on clean "
                             "source images, or BatchNorm buffers only (auto: the checkpoint's if it has them)")
    parser.add_argument("--source-size", type=int, default=1000,
                        help="clean source images kept apart for --source samples")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=5, help="early-stopping patience (the paper's 5)")
    parser.add_argument("--strategies", nargs="+", choices=BASELINES, default=list(BASELINES),
                        help="baselines to measure auto against")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0)) - 1),
                        help="torch threads per strategy (default: the cores minus one, as the daemon's trainer)")
    parser.add_argument("--json", type=Path, help="where to write the JSON (default: bench/results/drift-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.val_size, args.epochs, args.source_size = 200, 100, 2, 500
    return args


def write_json(out: Path, args: argparse.Namespace, results: list[ScenarioResult], statistics: dict[str, Any],
               started: float, load_before: tuple[float, float, float], finished: bool) -> None:
    """Every figure, the targets and the run's conditions (rewritten after each scenario, so a cut
    run keeps what it measured)."""
    from bench import run_meta

    meta = {
        "finished": finished,
        "machine": run_meta.machine(),
        "settings": run_meta.settings(args),
        "source_statistics": {k: statistics.get(k) for k in ("origin", "samples", "accuracy")},
        "energy_unit": "cpu_seconds (process time; no meter)",
        # The detector and the ladders change while they are tuned: say which versions ran.
        "detector_versions_seen": statistics.get("detector_versions", []),
        "sha256_now": {name: _digest(ROOT / name)
                       for name in ("drift/detect.py", "drift/strategy.py", "drift/source_stats.py", "drift/suite.py")},
        "total_seconds": time.perf_counter() - started,
        "load_average_before": load_before,
        "load_average_now": os.getloadavg(),
    }
    payload = {"meta": meta, "targets": evaluate_targets(results),
               "scenarios": [asdict(r) | {"auto": asdict(r.auto) | {"ran": r.auto.ran}} for r in results]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suites: list[tuple[str, str | None, str | None]] = []
    if "shapes" in args.suites:
        suites.append(("shapes", None, None))
    if "cifar10" in args.suites:
        from bench.run_meta import real_data

        found = real_data(args.reference, args.data, args.checkpoint)
        if found is not None:
            suites.append(("cifar10", *found))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name, data, checkpoint in suites:
        suite_args = copy.copy(args)
        suite_args.data, suite_args.checkpoint = data, checkpoint
        if suite_args.test_size is None:
            suite_args.test_size = 500 if data else 1000
        if args.quick:
            suite_args.test_size = 200
        base = args.json or Path(__file__).parent / "results" / f"drift-{stamp}.json"
        suite_args.json = base.with_name(f"{base.stem}-{name}{base.suffix}") if len(suites) > 1 else base
        print(f"\n===== suite: {name} =====\n", flush=True)
        run_suite(suite_args)
    return 0


def run_suite(args: argparse.Namespace) -> int:
    """One suite: every scenario, the summary and the targets; JSON to ``args.json``."""
    source = f"data {args.data}" if args.data else "generated Shapes-40 scenarios"
    model = args.checkpoint or "the shipped base model"
    print(f"drift benchmark: {source}, {model}, {args.train_size}/{args.val_size}/{args.test_size} "
          f"train/val/test samples, {args.epochs} epochs (patience {args.patience}), {args.threads} threads",
          file=sys.stderr)
    out = args.json
    started = time.perf_counter()
    load_before = os.getloadavg()

    def on_result(result: ScenarioResult, so_far: list[ScenarioResult], statistics: dict[str, Any]) -> None:
        if len(so_far) == 1:
            print(f"Energy is CPU seconds (process time of each strategy; auto's includes detection): no meter.\n"
                  f"Accuracy on {args.test_size} held-out drifted test samples; {args.train_size} training and "
                  f"{args.val_size} validation samples; {args.epochs} epochs, patience {args.patience}.\n"
                  f"Source statistics of auto: {statistics['origin']}; source accuracy "
                  f"{_percent(statistics['accuracy'])}%.\n")
        print(format_scenario(result) + "\n", flush=True)
        write_json(out, args, so_far, statistics, started, load_before, finished=False)

    results, statistics = run_benchmark(args, on_result)
    total_seconds = time.perf_counter() - started
    load_after = os.getloadavg()
    print(format_summary(results))
    print()
    print(format_breakdown(results))
    print()
    print(format_targets(evaluate_targets(results)))
    reference = format_reference(results)
    if reference:
        print(reference)
    if len(statistics.get("detector_versions", [])) > 1:
        print("\nWARNING: the detector or the ladders changed during the run; these figures mix versions.")
    print(f"\n{len(results)} scenarios in {total_seconds:.0f} s wall; load average (1, 5, 15 min) "
          f"{', '.join(f'{v:.2f}' for v in load_before)} before, {', '.join(f'{v:.2f}' for v in load_after)} after")
    write_json(out, args, results, statistics, started, load_before, finished=True)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
