"""``tbftd train-base`` and ``tbftd finetune``: the learner from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from service.cli import CLIError
from service.progress_line import ProgressLine


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the learner commands."""
    train = subparsers.add_parser(
        "train-base",
        help="train the base model on generated Shapes-40 source data",
        description="Train a ResNet-26 from scratch on the source sub-populations of Shapes-40 and "
        "save it as a checkpoint. The model shipped in the package was made with the defaults.",
    )
    train.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    train.add_argument("--out", type=Path, default=Path("base-shapes-resnet26.pt"), help="checkpoint to write")
    train.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    train.set_defaults(func=run_train_base)

    tune = subparsers.add_parser(
        "finetune",
        help="fine-tune one block of the base model on generated drifted data",
        description="Make drifted samples of one drift type, fine-tune the block the drift type maps "
        "to (or --block), and report test accuracy before and after.",
    )
    tune.add_argument("--drift", choices=("input", "feature", "output"), default="input")
    tune.add_argument("--block", choices=("block1", "block2", "block3", "fc", "full", "bn"),
                      help="strategy to run (default: the block the drift type maps to)")
    tune.add_argument("--train-size", type=int, default=1000)
    tune.add_argument("--profile", choices=("tbftd", "paper"), default="tbftd",
                      help="fine-tuning settings: the daemon's default, or the paper's (README, Fine-tuning profiles)")
    tune.add_argument("--epochs", type=int, help="most epochs (default: the profile's)")
    tune.add_argument("--bn-mode", choices=("adapt", "frozen"), help="BatchNorm mode (default: the profile's)")
    tune.add_argument("--corruption", default="gaussian_noise", help="input drift corruption")
    tune.add_argument("--severity", type=int, default=5, choices=range(1, 6), metavar="1..5")
    tune.add_argument("--checkpoint", type=Path, help="base model checkpoint (default: the shipped one)")
    tune.add_argument("--out", type=Path, help="write the fine-tuned model here")
    tune.add_argument("--seed", type=int, default=0)
    tune.set_defaults(func=run_finetune)


def run_train_base(args: argparse.Namespace) -> int:
    """Train and save the base model, printing progress and the held-out accuracy."""
    import torch

    from device.pretrain import PretrainProgress
    from drift.base_model import make_base_model, save_base_model

    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    printer = _ThrottledProgress(sys.stderr)

    def on_progress(progress: PretrainProgress) -> None:
        printer.update(f"epoch {progress.epoch}/{progress.epochs}  step {progress.step}/{progress.total_steps}  "
                       f"loss {progress.train_loss:.3f}", progress.step, progress.total_steps)

    model, report = make_base_model(seed=args.seed, on_progress=on_progress)
    printer.finish()
    path = save_base_model(args.out, model, report)
    print(f"held-out source accuracy {100 * report.val_accuracy:.1f}% after {report.total_seconds:.0f} s "
          f"({report.num_train} training images); saved {path}")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    """Fine-tune on one generated drift scenario and print the outcome."""
    from device.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from device.finetune import FinetuneConfig, Progress, finetune
    from device.inference import predict
    from device.profiles import profile_settings
    from device.samples import Samples
    from device.shipped import load_shipped_base_model
    from drift.scenarios import shapes_scenario
    from drift.types import block_for

    if args.train_size < 10:
        raise CLIError("--train-size must be at least 10")
    try:
        base = load_checkpoint(args.checkpoint) if args.checkpoint else load_shipped_base_model()
    except (CheckpointError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    model = base.model
    block = args.block or block_for(args.drift)
    try:
        scenario = shapes_scenario(args.drift, train_size=args.train_size, val_size=max(50, args.train_size // 3),
                                   test_size=1000, seed=args.seed, corruption=args.corruption, severity=args.severity)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if tuple(scenario.train.x.shape[1:]) != model.config.input_shape:
        raise CLIError(f"the model expects {model.config.input_shape} inputs; generated data is {scenario.train.x.shape[1:]}")
    print(f"{scenario.name}: {scenario.description}; fine-tuning {block} on {len(scenario.train)} samples")
    before = float((predict(model, scenario.test.x).classes == scenario.test.y).mean())
    printer = _ThrottledProgress(sys.stderr)

    def on_progress(progress: Progress) -> None:
        if progress.phase == "train":
            printer.update(f"epoch {progress.epoch}/{progress.epochs}  batch {progress.batch}/{progress.batches}  "
                           f"loss {progress.loss:.3f}  {progress.samples_per_second:.0f} samples/s",
                           (progress.epoch - 1) * progress.batches + progress.batch, progress.epochs * progress.batches)
        elif progress.phase == "validate" and progress.val_accuracy is not None:
            printer.note(f"epoch {progress.epoch}: val loss {progress.val_loss:.3f}, val accuracy {100 * progress.val_accuracy:.1f}%")

    overrides = {k: v for k, v in (("epochs", args.epochs), ("bn_mode", args.bn_mode)) if v is not None}
    config = FinetuneConfig(**{**profile_settings(args.profile, block), **overrides, "seed": args.seed})
    result = finetune(model, block, Samples.from_arrays(scenario.train.x, scenario.train.y),
                      Samples.from_arrays(scenario.val.x, scenario.val.y), config, on_progress=on_progress)
    printer.finish()
    after = float((predict(model, scenario.test.x).classes == scenario.test.y).mean())
    print(f"{block}: test accuracy {100 * before:.1f}% → {100 * after:.1f}% in {result.seconds:.1f} s "
          f"({result.cpu_seconds:.1f} CPU s, {result.epochs_run} epochs, best epoch {result.best_epoch}, "
          f"prefix cache: {result.cache})")
    if args.out:
        save_checkpoint(args.out, model, extra={"finetuned": result.summary(), "scenario": scenario.name})
        print(f"saved {args.out}")
    return 0


class _ThrottledProgress:
    """A :class:`ProgressLine` fed every step: redrawn on a terminal, a line per tenth elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self.line = ProgressLine(stream)
        self.last_fraction = -1.0

    def update(self, text: str, done: int, total: int) -> None:
        fraction = done / total if total else 0.0
        if self.line.tty or fraction - self.last_fraction >= 0.1 or done == total:
            self.line.draw(text, fraction)
            self.last_fraction = fraction

    def note(self, text: str) -> None:
        self.line.note(text)

    def finish(self) -> None:
        self.line.finish()
