"""Detection's prices: what each kind of pass costs, against the prices ``drift/detect.py`` plans with.

Detection keeps within its bound (5% of a full fine-tune of the same samples) by planning in
forward-pass equivalents: one eval-mode forward pass of one sample in the default memory layout
is the unit. This benchmark measures each pass it prices, in the default layout and on the
channels-last copy detection runs its forward passes on, side by side in one process (the
layouts alternate within every repeat), and prints each as a ratio to the unit next to the price
it is planned at. A ratio above its price means detection plans too cheaply on this machine:
re-measure here before trusting its cost bound on another CPU (a Pi, say).

    python bench/detect_cost.py              # 256 samples, 7 repeats, one thread
    python bench/detect_cost.py --quick      # a small run (CI)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Price:
    """One kind of pass: CPU milliseconds per sample in each layout, and how detection prices it."""

    name: str
    default_ms: float
    channels_last_ms: float
    priced_layout: str
    priced_as: str
    price: float
    unit_ms: float = 0.0

    @property
    def measured(self) -> float:
        """The priced layout's cost in units (default-layout eval passes of one sample)."""
        ms = self.channels_last_ms if self.priced_layout == "channels-last" else self.default_ms
        return ms / self.unit_ms

    @property
    def holds(self) -> bool:
        """Whether the price covers what the pass measured here."""
        return self.measured <= self.price


def _per_sample_ms(run: Callable[[], Any], samples: int) -> float:
    started = time.process_time()
    run()
    return 1000 * (time.process_time() - started) / samples


def measure_prices(samples: int, repeats: int, seed: int) -> list[Price]:
    """Median CPU ms per sample of every priced pass, both layouts alternating in each repeat."""
    import copy

    import torch
    from torch.nn import functional as F

    from device.batchnorm import recalibrate_batchnorm
    from device.samples import Samples
    from device.shipped import load_shipped_base_model
    from drift import detect
    from drift.shapes import generate
    from drift.source_stats import observe

    data = generate(samples, seed)
    batch = Samples.from_arrays(data.x, data.y)
    images = batch.images()
    default = load_shipped_base_model().model.eval()
    layouts = {"default": default, "channels-last": detect.forward_copy(default)}
    train_batch = min(128, samples)
    # Re-estimated in batches of the statistics probe's size on 300 samples (it fits on 68 in one).
    fit_batch = min(64, samples)
    refitted = {k: copy.deepcopy(m) for k, m in layouts.items()}

    def training_step(model: torch.nn.Module) -> Callable[[], None]:
        trial = copy.deepcopy(model).train()
        optimizer = torch.optim.SGD(trial.parameters(), lr=0.0, momentum=0.9)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(trial(images[:train_batch]), batch.y[:train_batch]).backward()
            optimizer.step()

        return step

    def eval_pass(model: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model.eval()(images)

        return run

    passes: dict[str, tuple[dict[str, Callable[[], Any]], int]] = {
        "eval forward": ({k: eval_pass(m) for k, m in layouts.items()}, samples),
        "observing pass": ({k: (lambda m=m: observe(m, images)) for k, m in layouts.items()}, samples),
        "train-mode re-estimate": (
            {k: (lambda m=m: recalibrate_batchnorm(m, batch, batch_size=fit_batch)) for k, m in refitted.items()},
            samples,
        ),
        f"training step (batch {train_batch})": ({k: training_step(m) for k, m in layouts.items()}, train_batch),
    }
    timings: dict[tuple[str, str], list[float]] = {}
    for name, (runs, count) in passes.items():
        for layout, run in runs.items():
            run()  # the first call of a shape sets up kernels; not what a detection pays each time
            timings[(name, layout)] = []
    for _ in range(repeats):
        for name, (runs, count) in passes.items():
            for layout, run in runs.items():
                timings[(name, layout)].append(_per_sample_ms(run, count))
    median = {key: statistics.median(values) for key, values in timings.items()}
    how = {
        "eval forward": ("channels-last", "COPY_FORWARDS", detect.COPY_FORWARDS),
        "observing pass": ("channels-last", "OBSERVE_FORWARDS", detect.OBSERVE_FORWARDS),
        "train-mode re-estimate": ("default", "BN_FIT_FORWARDS", detect.BN_FIT_FORWARDS),
        f"training step (batch {train_batch})": ("default", "TRAIN_STEP_FORWARDS", detect.TRAIN_STEP_FORWARDS),
    }
    unit = median[("eval forward", "default")]
    prices = [
        Price(name, median[(name, "default")], median[(name, "channels-last")], *how[name], unit_ms=unit)
        for name in passes
    ]
    # The statistics probe re-estimates on the channels-last copy, priced as COPY_FORWARDS too.
    re_estimate = prices[2]
    prices.append(Price("train-mode re-estimate", re_estimate.default_ms, re_estimate.channels_last_ms,
                        "channels-last", "COPY_FORWARDS", detect.COPY_FORWARDS, unit_ms=unit))
    return prices


def format_table(prices: list[Price]) -> str:
    """CPU ms per sample in each layout, their ratio, and the priced layout against its price."""
    header = (f"{'pass':<28} {'default':>8} {'ch-last':>8} {'cl/def':>7}   {'priced as':<20} "
              f"{'layout':<13} {'price':>6} {'measured':>8}  holds")
    lines = [header]
    for p in prices:
        lines.append(f"{p.name:<28} {p.default_ms:>8.3f} {p.channels_last_ms:>8.3f} "
                     f"{p.channels_last_ms / p.default_ms:>7.2f}   {p.priced_as:<20} {p.priced_layout:<13} "
                     f"{p.price:>6.2f} {p.measured:>8.2f}  {'yes' if p.holds else 'NO'}")
    lines.append(f"(CPU ms per sample, medians; 'measured' in units of the default layout's eval forward, "
                 f"{prices[0].unit_ms:.3f} ms)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 samples, 3 repeats (CI)")
    parser.add_argument("--samples", type=int, default=256, help="samples per pass (detection observes up to 256)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the drift benchmark's setting: 1)")
    parser.add_argument("--json", type=Path, help="where to write the JSON (default: bench/results/detect-cost-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats = 128, 3
    if args.samples < 8 or args.repeats < 1:
        parser.error("--samples must be at least 8 and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"detection cost benchmark: the shipped base model, {args.samples} Shapes-40 samples, "
          f"{args.repeats} repeats, {args.threads} thread(s)", file=sys.stderr)
    started = time.perf_counter()
    prices = measure_prices(args.samples, args.repeats, args.seed)
    print(format_table(prices))
    misses = [p for p in prices if not p.holds]
    for p in misses:
        print(f"WARNING: {p.name} ({p.priced_layout}) measures {p.measured:.2f} units, priced at "
              f"{p.priced_as} = {p.price}: detection plans too cheaply on this machine", file=sys.stderr)
    from bench import run_meta

    out = args.json or Path(__file__).parent / "results" / f"detect-cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": run_meta.machine(),
        "settings": run_meta.settings(args),
        "total_seconds": time.perf_counter() - started,
    }
    rows = [asdict(p) | {"measured": p.measured, "holds": p.holds} for p in prices]
    out.write_text(json.dumps({"meta": meta, "prices": rows}, indent=2, default=str))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
