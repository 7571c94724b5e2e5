"""``tbftd demo``: target-block fine-tuning against a full fine-tune, end to end, on one machine.

The demo starts ``tbftd serve`` as a child process on a temporary data directory and a free
loopback port, with an emulated UM25C on a pseudo-terminal as its meter (the emulator runs in
the demo's process; its power follows this machine's CPU load, as a Pi's does) and the shipped
base model. Then it acts as a device through :mod:`service.client`:

1. posts clean Shapes-40 samples and shows the base model's accuracy on clean held-out images;
2. for each drift type (input: gaussian noise at severity 5; feature: unseen sub-populations;
   output: flipped labels), starting from the base model version:
   - measures the active model on held-out drifted test images (``POST /v1/predict``),
   - posts the drifted training samples to a context of their own,
   - runs a ``full`` fine-tune of those samples (``POST /v1/jobs``), measures its model, and
     rolls back to the version it started from, so that
   - the drift hint's job (the block the drift type maps to) trains the same samples from the
     same version; its model is measured on the same test images.

It prints one table: block chosen, accuracy before → after, seconds, joules and their source,
the full fine-tune's accuracy and joules, and the energy saved against it. The daemon is stopped
(SIGTERM, then a wait) and the directory removed at the end, on Ctrl+C or on SIGTERM; ``--keep``
leaves it running until Ctrl+C. The daemon runs in its own session so that Ctrl+C reaches the
demo only, which then stops it once, cleanly.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from service.cli import CLIError

if TYPE_CHECKING:
    import numpy as np

    from drift.scenarios import DriftScenario
    from energy.emulator import Emulator
    from service.client import TbftdClient

#: Drift types the demo runs, in order.
DRIFT_TYPES: tuple[str, ...] = ("input", "feature", "output")
#: Seconds the daemon gets to become ready, and to stop after SIGTERM before it is killed.
READY_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 60.0
#: Seconds one job may take before the demo gives up on it.
JOB_TIMEOUT_SECONDS = 1800.0
#: Mixed into the demo's seed for its clean images, so they are none of the base model's.
_CLEAN_SEED_SALT = 0xC1EA4


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``tbftd demo``."""
    demo = subparsers.add_parser(
        "demo",
        help="run a daemon with an emulated meter and compare target-block with full fine-tuning",
        description="Start a daemon on a temporary directory with an emulated UM25C meter, act as a "
        "device posting drifted samples, and compare, for each drift type, the block the drift "
        "type maps to with a full fine-tune of the same samples from the same model: accuracy, "
        "seconds and joules. The jobs run with the daemon's default fine-tuning profile (the full fine-tune "
        "with the paper's settings): a few minutes on a 2-core machine.",
    )
    demo.add_argument("--train-samples", type=int, default=500,
                      help="drifted samples posted per drift type (default 500; the daemon holds 20%% out for validation)")
    demo.add_argument("--test-samples", type=int, default=500,
                      help="held-out drifted images per drift type that accuracy is measured on (default 500)")
    demo.add_argument("--clean-samples", type=int, default=200, help="clean samples posted first (default 200)")
    demo.add_argument("--profile", choices=("tbftd", "paper"), default="tbftd",
                      help="the daemon's fine-tuning profile (default tbftd, the daemon's default)")
    demo.add_argument("--epochs", type=int, help="most epochs of every job (default: the profile's)")
    demo.add_argument("--batch-size", type=int, help="training batch size of every job (default: the profile's)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated data and of training (default 0)")
    demo.add_argument("--drift", action="append", choices=DRIFT_TYPES,
                      help="run only this drift type (repeatable; default: all three)")
    demo.add_argument("--port", type=int, help="port of the daemon (default: a free one)")
    demo.add_argument("--keep", action="store_true",
                      help="leave the daemon running afterwards and print its dashboard URL, until Ctrl+C")
    demo.set_defaults(func=run_demo)


@dataclass(frozen=True)
class JobFigures:
    """A finished job as the demo reports it. Accuracy is on the held-out drifted test images."""

    job_id: int
    block: str
    version_in: int
    version_out: int
    promoted: bool
    accuracy: float
    seconds: float
    joules: float
    source: str


@dataclass(frozen=True)
class DriftOutcome:
    """One drift type: the active model's accuracy before, the target block's job and the full one's."""

    drift: str
    description: str
    accuracy_before: float
    block: JobFigures
    full: JobFigures

    @property
    def energy_saving(self) -> float:
        """1 − joules of the block job / joules of the full job (a fraction; negative if it cost more)."""
        return 1.0 - self.block.joules / self.full.joules if self.full.joules > 0 else float("nan")


class DemoDaemon:
    """``tbftd serve`` in a child process on a temporary directory, metered by an emulated UM25C.

    :meth:`start` returns once the process runs (not yet ready: see :meth:`wait_ready`);
    :meth:`stop` stops it with SIGTERM (SIGKILL after ``STOP_TIMEOUT_SECONDS``), stops the meter
    and removes the directory. Safe to call twice.
    """

    def __init__(self, port: int | None, profile: str, epochs: int | None, batch_size: int | None, seed: int) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="tbftd-demo-"))
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.profile = profile
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self.log_path = self.directory / "daemon.log"
        self.emulator: Emulator | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the meter emulator and the daemon process."""
        from energy.emulator import Emulator
        from energy.profiles import CpuLoadProfile

        self.emulator = Emulator("um25c", CpuLoadProfile(), link_path=self.directory / "um25c")
        meter_port = self.emulator.start()
        # The demo configures its daemon completely: settings from the caller's environment (a
        # token, a host, a data directory) or a systemd unit's variables must not leak into it.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TBFTD_") and k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
        command = [
            sys.executable, "-m", "service.cli", "serve",
            "--port", str(self.port), "--data-dir", str(self.directory / "data"),
            "--meter-port", meter_port, "--meter-kind", "um25c",
            "--finetune-profile", self.profile, "--seed", str(self.seed),
            *(["--epochs", str(self.epochs)] if self.epochs is not None else []),
            *(["--batch-size", str(self.batch_size)] if self.batch_size is not None else []),
            # Each drift type adds two versions; the base must survive pruning for the rollbacks.
            "--keep-versions", str(2 * len(DRIFT_TYPES) + 2),
            # The demo is its daemon's only client and waits while a job trains: the trainer need not
            # yield to it. Its threads are the daemon's choice, the cores free as each job starts.
            "--trainer-nice", "0",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                            start_new_session=True)

    def wait_ready(self) -> None:
        """Block until the daemon answers ``/healthz``; CLIError with its log if it dies or hangs."""
        from service.client import TbftdClient, TbftdError

        assert self.process is not None
        client = TbftdClient(self.url, token="", retries=0, timeout_seconds=5.0)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CLIError(f"the daemon exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                client.healthz()
                return
            except TbftdError:
                time.sleep(0.2)
        raise CLIError(f"the daemon did not answer within {READY_TIMEOUT_SECONDS:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the daemon's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> int | None:
        """Stop the daemon, the meter, and remove the directory; the daemon's exit status."""
        status = None
        process, self.process = self.process, None
        if process is not None:
            try:
                if process.poll() is None:
                    process.terminate()
                status = process.wait(STOP_TIMEOUT_SECONDS)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                # It did not stop in time, or the user pressed Ctrl+C again while it stopped.
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the trainer child too
                status = process.wait()
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None
        shutil.rmtree(self.directory, ignore_errors=True)
        return status


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; see the module docstring."""
    if args.train_samples < 40 or args.test_samples < 10 or args.clean_samples < 10:
        raise CLIError("give at least 40 training, 10 test and 10 clean samples")
    if (args.epochs is not None and args.epochs < 1) or (args.batch_size is not None and args.batch_size < 1):
        raise CLIError("--epochs and --batch-size must be at least 1")
    started = time.monotonic()
    daemon = DemoDaemon(args.port, args.profile, args.epochs, args.batch_size, args.seed)
    with _sigterm_as_interrupt():
        try:
            daemon.start()
            return _run(args, daemon, started)
        finally:
            status = daemon.stop()
            if status not in (0, None):
                print(f"tbftd demo: the daemon exited with status {status}", file=sys.stderr)


def _overrides(args: argparse.Namespace) -> str:
    """The profile's settings the command line replaced, for the heading."""
    given = [f"{name} {value}" for name, value in (("epochs", args.epochs), ("batch size", args.batch_size))
             if value is not None]
    return f" ({', '.join(given)})" if given else ""


def _run(args: argparse.Namespace, daemon: DemoDaemon, started: float) -> int:
    from service.client import TbftdClient

    # No token (the demo's daemon has none, whatever $TBFTD_API_TOKEN says) and few retries:
    # the daemon is local, so a failure is real and should show at once.
    client = TbftdClient(daemon.url, token="", retries=2, backoff_seconds=0.2, timeout_seconds=120.0)
    drifts = tuple(args.drift) if args.drift else DRIFT_TYPES
    assert daemon.process is not None and daemon.emulator is not None
    print(f"daemon: {daemon.url} (pid {daemon.process.pid}), data in {daemon.directory}")
    print(f"meter: emulated UM25C on {daemon.emulator.port}, its power following this machine's CPU load")
    # Generating the images takes a few seconds: meanwhile the daemon imports torch and starts.
    clean_x, clean_y = _clean_images(args.clean_samples * 2, args.seed)
    scenarios = {d: _scenario(d, args) for d in drifts}
    daemon.wait_ready()

    status = client.status()
    base_version = int(status["model_version"])
    half = args.clean_samples
    client.post_samples(clean_x[:half], clean_y[:half], context="cam-clean", device_id="demo-cam")
    base_accuracy, _ = _accuracy(client, clean_x[half:], clean_y[half:])
    print(f"base model: version {base_version}, {_percent(base_accuracy)} on {half} clean held-out images "
          f"({half} clean samples posted to context cam-clean)")
    print(f"each drift type starts from version {base_version}; {args.train_samples} drifted samples, "
          f"fine-tuning profile {args.profile}{_overrides(args)}, accuracy on {args.test_samples} held-out "
          "drifted images\n")

    outcomes = [_run_drift(client, drift, scenarios[drift], base_version) for drift in drifts]
    print()
    print_outcomes(outcomes, sys.stdout)
    print(f"\ndemo took {time.monotonic() - started:.0f} s")
    if args.keep:
        _keep_serving(daemon)
    return 0


def _run_drift(client: TbftdClient, drift: str, scenario: DriftScenario, base_version: int) -> DriftOutcome:
    """The steps of one drift type (module docstring, step 2)."""
    context = f"cam-{drift}"  # its own model: every drift type starts from the base
    if client.models(context)["active"] != base_version:
        client.activate(base_version, context)
    before, version = _accuracy(client, scenario.test.x, scenario.test.y, context)
    print(f"{drift} drift ({scenario.description})")
    print(f"  version {version} on the drifted test images: {_percent(before)}")
    posted = client.post_samples(scenario.train.x, scenario.train.y, context=context, device_id="demo-cam")
    print(f"  posted {posted.accepted} drifted samples to context {context} in {posted.batches} batches")

    job = client.submit_job(context, block="full")
    print(f"  full fine-tune for comparison: job {job['id']}")
    full = _finish(client, job["id"], scenario, "  ", context)
    client.activate(full.version_in, context)
    print(f"  rolled back to version {full.version_in}")

    hint = client.post_drift(drift, context=context, min_samples=posted.context_samples)
    if hint["job"] is None:
        raise CLIError(f"the drift hint did not start a job: {hint}")
    print(f"  drift hint {drift!r}: job {hint['job']['id']} trains {hint['job']['block']}")
    block = _finish(client, hint["job"]["id"], scenario, "  ", context)
    if not block.promoted:
        client.activate(block.version_in, context)  # measured above; the daemon had kept the model it started from
    if block.version_in != full.version_in:
        raise CLIError(f"the jobs started from different versions ({full.version_in}, {block.version_in})")
    return DriftOutcome(drift, scenario.description, before, block, full)


def _finish(client: TbftdClient, job_id: int, scenario: DriftScenario, indent: str, context: str) -> JobFigures:
    """Wait for a job with a progress bar, measure its model (served to ``context``) on the test
    images, and summarise it."""
    from service.operator_commands import JobProgressBar

    bar = JobProgressBar(sys.stderr, label=indent)
    try:
        job = client.wait_for_job(job_id, JOB_TIMEOUT_SECONDS, bar.update)
    finally:
        bar.finish()
    if job["state"] != "succeeded" or job.get("model_version_out") is None:
        raise CLIError(f"job {job_id} {job['state']}: {job.get('error') or 'no model'}")
    version_out = int(job["model_version_out"])
    promoted = bool((job.get("decision") or {}).get("promoted"))
    if client.models(context)["active"] != version_out:
        client.activate(version_out, context)  # not promoted: measure it all the same, for the comparison
    accuracy, _ = _accuracy(client, scenario.test.x, scenario.test.y, context)
    energy = job.get("energy") or {}
    figures = JobFigures(job_id, job["block"], int(job["model_version_in"]), version_out, promoted, accuracy,
                         float(energy.get("seconds") or 0.0), float(energy.get("joules") or 0.0),
                         str(energy.get("source") or "none"))
    print(f"{indent}→ {figures.block}: {_percent(accuracy)} on the test images, {figures.seconds:.1f} s, "
          f"{figures.joules:.1f} J ({figures.source}); version {version_out}"
          + ("" if promoted else " (not promoted by the daemon)"))
    return figures


def print_outcomes(outcomes: list[DriftOutcome], stream: TextIO) -> None:
    """The demo's table, and a line on where the figures come from."""
    from service.operator_commands import print_table

    headers = ("drift", "block", "accuracy before → after", "seconds (s)", "joules (J)",
               "full: accuracy", "full: seconds (s)", "full: joules (J)", "energy saving", "energy source")
    rows = []
    for o in outcomes:
        source = o.block.source if o.block.source == o.full.source else f"{o.block.source} / full: {o.full.source}"
        rows.append((
            o.drift, o.block.block, f"{_percent(o.accuracy_before)} → {_accuracy_cell(o.block)}",
            f"{o.block.seconds:.1f}", f"{o.block.joules:.1f}", _accuracy_cell(o.full), f"{o.full.seconds:.1f}",
            f"{o.full.joules:.1f}", f"{100 * o.energy_saving:.0f}%", source,
        ))
    print_table(headers, rows, numeric=(3, 4, 5, 6, 7, 8), stream=stream)
    print("\naccuracy: the model each job made, on held-out drifted images no job trained on; "
          "energy saving: 1 − joules(block) / joules(full), same samples, same starting model", file=stream)
    if any(not figures.promoted for o in outcomes for figures in (o.block, o.full)):
        print("*: not promoted by the daemon (not better on its validation samples), measured all the same",
              file=stream)


def _accuracy_cell(figures: JobFigures) -> str:
    return _percent(figures.accuracy) + ("" if figures.promoted else "*")


def _keep_serving(daemon: DemoDaemon) -> None:
    assert daemon.process is not None
    print(f"\nthe daemon keeps running: dashboard {daemon.url}/, API {daemon.url}/v1/status")
    print(f"try: tbftd status --url {daemon.url}   tbftd energy --url {daemon.url}   tbftd jobs --url {daemon.url}")
    print("Ctrl+C stops it and removes its directory", flush=True)
    try:
        while daemon.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping the daemon", file=sys.stderr)
        return
    print(f"the daemon exited by itself with status {daemon.process.returncode}", file=sys.stderr)


def _accuracy(client: TbftdClient, x: np.ndarray, y: np.ndarray, context: str = "default") -> tuple[float, int]:
    prediction = client.predict(x, context)
    return float((prediction.classes == y).mean()), prediction.model_version


def _clean_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    from drift.scenarios import SOURCE_SUBCLASSES
    from drift.shapes import generate

    data_seed = int(np.random.SeedSequence([seed, _CLEAN_SEED_SALT]).generate_state(1)[0])
    data = generate(n, data_seed, subclasses=SOURCE_SUBCLASSES)
    return data.x, data.y


def _scenario(drift: str, args: argparse.Namespace) -> DriftScenario:
    from drift.scenarios import shapes_scenario

    return shapes_scenario(drift, train_size=args.train_samples, val_size=0, test_size=args.test_samples,
                           seed=args.seed, corruption="gaussian_noise", severity=5)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM raises KeyboardInterrupt, so that the demo cleans up as on Ctrl+C."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
