"""A daemon under fault injection: devices post, a job trains, a fault strikes at a random moment,
the daemon restarts on what the disk kept, and the checks say what was lost.

One cycle (:meth:`FaultRun.cycle`):

1. start ``tbftd serve`` in a process group of its own (the API process, its trainer child and
   multiprocessing's helpers share it), on the data directory the last cycle left;
2. check what the restart found (:meth:`FaultRun.check`): every acknowledged sample is stored
   with its label and bytes, every acknowledged hint, job and cancellation is there, the database
   passes ``PRAGMA integrity_check``, every model version it lists loads (torch checkpoint and
   served weights), the active version answers ``/v1/predict``, and no job is left ``running``
   but the one the new daemon took up;
3. devices post batches from threads while a job trains on a context of its own (one is asked
   for whenever none is pending; some finish and are promoted, so versions are pruned too), and
   an operator now and then rolls the model back;
4. the fault: the caller's ``fault`` function (SIGKILL to the process group; or that and a power
   cut of the file system under the data directory, see :mod:`tests.powercut_fs`), at a random
   moment: some cycles while the job trains, others anywhere, start-up included.

Acknowledged means answered 2xx with a body that parsed; a request cut off by the fault is not
acknowledged, and whether it was stored does not matter. Used by ``tests/test_crash.py``,
``tests/test_powercut.py`` and ``bench/powercut.py``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np

from service.payloads import encode_raw_batch

#: Contexts the devices post to; the job trains on a context of its own.
DEVICE_CONTEXTS = ("cam-0", "cam-1", "cam-2")
JOB_CONTEXT = "train"
#: Seed of the job context's samples (device seeds are far below it).
JOB_SEED = 999_000_000
#: Samples the job context gets in the first cycle (a job needs 20; each class wants a few).
JOB_SAMPLES = 160
#: Blocks the job is asked for, in turn: ``fc`` and ``bn`` end within a cycle and promote.
JOB_BLOCKS = ("fc", "block3", "bn", "fc")
#: Where in a cycle the fault strikes, how often, and the most seconds it waits after that moment.
MOMENTS = ("training", "promotion", "anywhere")
MOMENT_WEIGHTS = (0.4, 0.2, 0.4)
MOMENT_DELAY_SECONDS = {"training": 2.5, "promotion": 1.0, "anywhere": 6.0}
#: Flags that keep the job short and the buffer large enough that nothing acknowledged is evicted.
DAEMON_FLAGS = (
    "--meter-kind", "estimate", "--baseline-seconds", "0", "--epochs", "3", "--batch-size", "32",
    "--keep-versions", "2", "--max-buffer-samples", "1000000", "--max-buffer-bytes", "4GiB",
    "--max-context-samples", "", "--max-device-samples", "",
    "--trainer-grace-seconds", "2", "--graceful-timeout-seconds", "1", "--log-level", "info",
)  # fmt: skip
#: The version a context (the one parameter) is served: its own, else the default model.
SERVED_VERSION_SQL = ("SELECT coalesce((SELECT version FROM scope_models WHERE scope = ?), "
                      "(SELECT version FROM model_versions WHERE active = 1))")
#: The base model's input and classes: one channel keeps a sample at 1 KiB, so hundreds of cycles
#: of posting stay cheap to store and to check.
SHAPE = (1, 32, 32)
CLASSES = 4
#: Seconds to wait for the daemon's /healthz; generous, since a busy machine starts it slowly.
READY_TIMEOUT_SECONDS = 120.0


def free_port() -> int:
    """A TCP port free on loopback just now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def batch_for(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels a device posts for ``seed``: the checks recompute them from it."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, *SHAPE), dtype=np.uint8), rng.integers(0, CLASSES, count)


def make_base_model(path: Path) -> Path:
    """The base model the faulted daemons serve: untrained, one input channel, ``CLASSES`` classes."""
    import torch

    from device.checkpoint import save_checkpoint
    from device.model import ModelConfig, ResNet26

    torch.manual_seed(0)
    config = ModelConfig(num_classes=CLASSES, in_channels=SHAPE[0], mean=(0.5,) * SHAPE[0], std=(0.5,) * SHAPE[0])
    return save_checkpoint(path, ResNet26(config))


@dataclass(frozen=True)
class AckedBatch:
    """A batch the daemon acknowledged (201): its ids and what was in it."""

    first_id: int
    last_id: int
    seed: int
    count: int


@dataclass
class Ledger:
    """Everything the daemon acknowledged over all cycles, which every restart must still hold."""

    batches: list[AckedBatch] = field(default_factory=list)
    hints: list[int] = field(default_factory=list)
    jobs: list[int] = field(default_factory=list)
    #: Jobs answered ``cancelled`` by ``DELETE /v1/jobs/{id}`` (queued ones are cancelled at once).
    cancelled: list[int] = field(default_factory=list)
    #: (version, seconds since the epoch when the activation was sent), the latest last.
    activations: list[tuple[int, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def samples(self) -> int:
        return sum(b.count for b in self.batches)


@dataclass
class CycleReport:
    """What one cycle did and found."""

    index: int
    fault_after_seconds: float
    phase_at_fault: str
    seconds_to_ready: float | None
    batches_acknowledged: int
    samples_acknowledged: int
    post_errors: int
    interrupted_jobs: list[int]
    problems: list[str]


class Devices:
    """Threads that post batches of 4 to 32 samples until stopped, recording what was acknowledged."""

    def __init__(self, url: str, ledger: Ledger, seed_base: int, threads: int = len(DEVICE_CONTEXTS)) -> None:
        self.url = url
        self.ledger = ledger
        self.seed_base = seed_base
        self.stop = threading.Event()
        self.acknowledged = 0
        self.samples = 0
        self.errors = 0
        self._threads = [threading.Thread(target=self._post, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)

    def _post(self, device: int) -> None:
        context = DEVICE_CONTEXTS[device % len(DEVICE_CONTEXTS)]
        rng = np.random.default_rng(self.seed_base + device)
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            sequence = 0
            while not self.stop.is_set():
                # Unique across devices, cycles and runs of one ledger: seed_base moves per cycle.
                seed = (self.seed_base + device) * 100_000 + sequence
                sequence += 1
                x, y = batch_for(seed, int(rng.integers(4, 33)))
                body, params = encode_raw_batch(x, y, context=context, device_id=f"dev-{device}")
                try:
                    reply = client.post("/v1/samples", content=body, params=params,
                                        headers={"content-type": "application/octet-stream"})
                    answer = reply.json() if reply.status_code == 201 else None
                except (httpx.HTTPError, ValueError):
                    answer = None
                if answer is None:
                    self.errors += 1
                    time.sleep(0.05)  # the daemon is down or starting: don't spin
                    continue
                acked = AckedBatch(int(answer["first_id"]), int(answer["last_id"]), seed, len(y))
                with self.ledger.lock:
                    self.ledger.batches.append(acked)
                self.acknowledged += 1
                self.samples += acked.count
                time.sleep(float(rng.uniform(0.05, 0.3)))  # a device posts now and then


class FaultRun:
    """Cycles of start, check, load, fault on one data directory; see the module docstring.

    ``fault(process)`` strikes the daemon (it must leave no process of its group alive);
    ``before_start()`` runs before each start (e.g. mounting the file system again).
    """

    def __init__(
        self,
        data_dir: Path,
        log_dir: Path,
        fault: Callable[[subprocess.Popen[bytes]], None],
        base_model: Path,
        *,
        seed: int = 0,
        before_start: Callable[[], None] | None = None,
        extra_flags: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.fault = fault
        self.base_model = base_model
        self.before_start = before_start
        self.extra_flags = extra_flags
        self.rng = np.random.default_rng(seed)
        self.ledger = Ledger()
        self.reports: list[CycleReport] = []
        self._job_blocks = 0
        self._job_samples_posted = False
        self._seen_running: set[int] = set()
        #: Acknowledged batches whose bytes a check has already compared (older ones are counted).
        self._verified_batches = 0

    # -- one cycle -------------------------------------------------------------------------------

    def cycle(self, index: int) -> CycleReport:
        """Start, check, load, fault; returns what the cycle found (``problems`` empty when sound)."""
        url = f"http://127.0.0.1:{free_port()}"
        # Where the fault strikes: while the job trains, just after a job's model was registered
        # (promotion and pruning), or at any moment, start-up included.
        moment = str(self.rng.choice(MOMENTS, p=MOMENT_WEIGHTS))
        delay_seconds = float(self.rng.uniform(0.0, MOMENT_DELAY_SECONDS[moment]))
        problems: list[str] = []
        interrupted: list[int] = []
        phase = "starting"
        ready_seconds: float | None = None
        log = (self.log_dir / f"daemon-{index}.log").open("wb")
        process = self._spawn(url, log)
        started = time.monotonic()
        # Devices post from the start, as real ones would: refused until the daemon listens.
        with Devices(url, self.ledger, seed_base=1000 * (index + 1)) as devices, \
                httpx.Client(base_url=url, timeout=30.0) as client:
            try:
                ready_by = started + (delay_seconds if moment == "anywhere" else READY_TIMEOUT_SECONDS)
                ready_seconds = self._wait_ready(client, process, ready_by)
                if ready_seconds is not None:
                    interrupted, problems = self.check(client)
                    phase = self._load(client, moment, started + delay_seconds, delay_seconds)
                elif moment != "anywhere":
                    problems.append(f"the daemon was not ready within {READY_TIMEOUT_SECONDS:.0f} s")
            finally:
                fault_after_seconds = time.monotonic() - started
                self.fault(process)  # also when something above failed: never leave a daemon behind
                log.close()
        report = CycleReport(index, fault_after_seconds, phase, ready_seconds, devices.acknowledged,
                             devices.samples, devices.errors, interrupted, problems)
        self.reports.append(report)
        return report

    def final_check(self) -> list[str]:
        """Start once more after the last fault, check with every acknowledged byte compared, then
        stop with SIGTERM, which must end the daemon with status 0."""
        url = f"http://127.0.0.1:{free_port()}"
        with (self.log_dir / "daemon-final.log").open("wb") as log:
            process = self._spawn(url, log)
            try:
                with httpx.Client(base_url=url, timeout=30.0) as client:
                    if self._wait_ready(client, process, time.monotonic() + READY_TIMEOUT_SECONDS) is None:
                        return [f"the daemon was not ready within {READY_TIMEOUT_SECONDS:.0f} s"]
                    _, problems = self.check(client, every_byte=True)
                process.send_signal(signal.SIGTERM)
                code = process.wait(60)
                return problems + ([] if code == 0 else [f"the daemon exited with {code} on SIGTERM"])
            finally:
                if process.poll() is None:
                    _kill_group(process)

    def _spawn(self, url: str, log: Any) -> subprocess.Popen[bytes]:
        """``tbftd serve`` on ``url``'s port and the run's data directory, in a new process group."""
        if self.before_start is not None:
            self.before_start()
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", url.rsplit(":", 1)[1],
             "--data-dir", str(self.data_dir), "--base-model", str(self.base_model), *DAEMON_FLAGS, *self.extra_flags],
            stdout=subprocess.DEVNULL, stderr=log, env=_daemon_environment(), start_new_session=True,
        )  # fmt: skip

    def _wait_ready(self, client: httpx.Client, process: subprocess.Popen[bytes], deadline: float) -> float | None:
        started = time.monotonic()
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the daemon exited with {process.returncode} while starting: see {self.log_dir}")
            try:
                if client.get("/healthz", timeout=2.0).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        return None

    def _load(self, client: httpx.Client, moment: str, fault_at: float, delay_seconds: float) -> str:
        """Keep a job going and now and then roll back until the fault is due: at ``fault_at`` for
        ``anywhere``, else ``delay_seconds`` after the job is seen training or a new model version
        appears; returns the phase at that moment."""
        self._ensure_job_samples(client)
        seen_since: float | None = None
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        versions = self._newest_version(client)
        while True:
            phase = self._phase(client)
            if phase in ("idle", "queued"):
                self._ask_for_job(client)
            if moment == "anywhere":
                if time.monotonic() >= fault_at:
                    return phase
            else:
                if seen_since is None:
                    if moment == "training" and phase == "training":
                        seen_since = time.monotonic()
                    elif moment == "promotion" and self._newest_version(client) > versions:
                        seen_since, phase = time.monotonic(), "promoted"
                if seen_since is not None and time.monotonic() >= seen_since + delay_seconds:
                    return phase if moment == "training" else f"after a promotion ({phase})"
                if time.monotonic() > deadline:
                    return f"{phase} (waited for {moment} in vain)"
            if self.rng.random() < 0.05:
                self._roll_back(client)
            time.sleep(0.05)

    def _newest_version(self, client: httpx.Client) -> int:
        models = self._answer(client.get("/v1/models", params={"context": JOB_CONTEXT})) or {"versions": []}
        return max((v["version"] for v in models["versions"]), default=0)

    # -- what the load does ------------------------------------------------------------------------

    def _ensure_job_samples(self, client: httpx.Client) -> None:
        """Post the job context's samples once (until one post of them is acknowledged)."""
        if self._job_samples_posted:
            return
        x, y = batch_for(JOB_SEED, JOB_SAMPLES)
        body, params = encode_raw_batch(x, y, context=JOB_CONTEXT)
        answer = self._answer(client.post("/v1/samples", content=body, params=params,
                                          headers={"content-type": "application/octet-stream"}))
        if answer:
            self._job_samples_posted = True
            with self.ledger.lock:
                self.ledger.batches.append(AckedBatch(answer["first_id"], answer["last_id"], JOB_SEED, JOB_SAMPLES))

    def _phase(self, client: httpx.Client) -> str:
        status = self._answer(client.get("/v1/status"))
        running = (status or {}).get("running_job")
        if running:
            self._seen_running.add(int(running["id"]))
            progress = running.get("progress") or {}
            return "training" if progress.get("phase") in ("train", "validate") else "job starting"
        return "queued" if (status or {}).get("queued_jobs") else "idle"

    def _ask_for_job(self, client: httpx.Client) -> None:
        block = JOB_BLOCKS[self._job_blocks % len(JOB_BLOCKS)]
        reply = client.post("/v1/jobs", json={"context": JOB_CONTEXT, "block": block})
        answer = self._answer(reply)
        if answer:
            self._job_blocks += 1
            with self.ledger.lock:
                self.ledger.jobs.append(int(answer["id"]))
            if self.rng.random() < 0.15:  # now and then a device changes its mind at once
                cancelled = self._answer(client.delete(f"/v1/jobs/{answer['id']}"))
                if cancelled and cancelled.get("state") == "cancelled":
                    with self.ledger.lock:
                        self.ledger.cancelled.append(int(answer["id"]))
        # Merged into the pending job, or starting one: never a job on the devices' large contexts.
        hint = self._answer(client.post("/v1/drift", json={"type": "output", "context": JOB_CONTEXT}))
        if hint:
            with self.ledger.lock:
                self.ledger.hints.append(int(hint["hint"]["id"]))

    def _roll_back(self, client: httpx.Client) -> None:
        models = self._answer(client.get("/v1/models", params={"context": JOB_CONTEXT}))
        if not models or len(models["versions"]) < 2:
            return
        choice = models["versions"][int(self.rng.integers(0, len(models["versions"])))]["version"]
        sent = time.time()
        if self._answer(client.post(f"/v1/models/{choice}/activate", params={"context": JOB_CONTEXT})):
            with self.ledger.lock:
                self.ledger.activations.append((int(choice), sent))

    @staticmethod
    def _answer(reply: httpx.Response) -> Any:
        return reply.json() if 200 <= reply.status_code < 300 else None

    # -- the checks --------------------------------------------------------------------------------

    def check(self, client: httpx.Client, *, every_byte: bool = False) -> tuple[list[int], list[str]]:
        """What a restarted daemon must hold; returns the jobs it found interrupted and the problems.

        Sample bytes are compared for batches acknowledged since the last check, all of them with
        ``every_byte``; that every acknowledged sample is there is checked every time.
        """
        problems: list[str] = []
        database = self.data_dir / "tbftd.sqlite3"
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30.0)
        try:
            integrity = conn.execute("PRAGMA integrity_check").fetchall()
            if integrity != [("ok",)]:
                problems.append(f"integrity_check: {integrity[:5]}")
            problems += self._check_samples(conn, every_byte=every_byte)
            problems += self._check_rows(conn)
            # "active" here: the version the job context is served.
            versions = conn.execute(f"SELECT version, path, version = ({SERVED_VERSION_SQL}), created_at "
                                    "FROM model_versions", (JOB_CONTEXT,)).fetchall()
            states = dict(conn.execute("SELECT id, state FROM jobs").fetchall())
            retried = {r[0] for r in conn.execute("SELECT retry_of FROM jobs WHERE retry_of IS NOT NULL")}
        finally:
            conn.close()
        problems += self._check_models(client, versions)
        # Start-up turned every job left running into interrupted before /healthz answered, so a
        # running one is the new daemon's; it must be the one it runs (read again while it changes).
        for job_id in sorted(j for j, state in states.items() if state == "running"):
            running_now = self._settled_running(client, job_id)
            if running_now is not True:
                fault = " (running at the fault)" if job_id in self._seen_running else ""
                problems.append(f"job {job_id}{fault} is running, but the daemon runs {running_now}")
        interrupted = [j for j in sorted(self._seen_running) if states.get(j) == "interrupted"]
        # requeue_interrupted (on by default): each interrupted job has a queued successor.
        problems += [f"interrupted job {j} was not re-queued" for j in interrupted if j not in retried]
        self._seen_running = {j for j in self._seen_running if states.get(j) in ("running", "queued")}
        return interrupted, problems

    def _settled_running(self, client: httpx.Client, job_id: int, timeout_seconds: float = 30.0) -> bool | int | None:
        """True once ``job_id`` is the daemon's running job or no longer running (it was claimed or
        finished between two reads); else what the daemon says it runs."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            status = self._answer(client.get("/v1/status")) or {}
            running_now = (status.get("running_job") or {}).get("id")
            job = self._answer(client.get(f"/v1/jobs/{job_id}")) or {}
            if running_now == job_id or job.get("state") != "running":
                return True
            if time.monotonic() > deadline:
                return running_now
            time.sleep(0.1)

    def _check_samples(self, conn: sqlite3.Connection, *, every_byte: bool) -> list[str]:
        """Every acknowledged sample is stored; the bytes and labels of those acknowledged since the
        last check (of all of them with ``every_byte``) are what was posted."""
        problems: list[str] = []
        with self.ledger.lock:
            batches = list(self.ledger.batches)
        stored = np.fromiter((row[0] for row in conn.execute("SELECT id FROM samples ORDER BY id")), dtype=np.int64)
        for acked in batches:
            present = np.searchsorted(stored, acked.last_id, "right") - np.searchsorted(stored, acked.first_id, "left")
            if present != acked.count:
                problems.append(f"acknowledged samples {acked.first_id}..{acked.last_id}: {present} of "
                                f"{acked.count} stored")
        for acked in batches if every_byte else batches[self._verified_batches :]:
            rows = conn.execute("SELECT label, payload FROM samples WHERE id BETWEEN ? AND ? ORDER BY id",
                                (acked.first_id, acked.last_id)).fetchall()
            x, y = batch_for(acked.seed, acked.count)
            if len(rows) == acked.count and ([r[0] for r in rows] != y.tolist()
                                             or b"".join(r[1] for r in rows) != x.tobytes()):
                problems.append(f"acknowledged samples {acked.first_id}..{acked.last_id} differ from what was posted")
        self._verified_batches = len(batches)
        return problems

    def _check_rows(self, conn: sqlite3.Connection) -> list[str]:
        problems: list[str] = []
        with self.ledger.lock:
            hints, jobs, cancelled = list(self.ledger.hints), list(self.ledger.jobs), list(self.ledger.cancelled)
            activations = list(self.ledger.activations)
        stored_hints = {r[0] for r in conn.execute("SELECT id FROM drift_hints")}
        problems += [f"acknowledged hint {h} is gone" for h in hints if h not in stored_hints]
        states = dict(conn.execute("SELECT id, state FROM jobs").fetchall())
        problems += [f"acknowledged job {j} is gone" for j in jobs if j not in states]
        problems += [f"acknowledged cancellation of job {j} is lost: it is {states.get(j)}" for j in cancelled
                     if states.get(j) != "cancelled"]
        if activations:
            version, sent = activations[-1]
            active = conn.execute(f"SELECT version, created_at FROM model_versions WHERE version = ({SERVED_VERSION_SQL})",
                                  (JOB_CONTEXT,)).fetchone()
            # A job may have promoted a newer version since; anything else lost the activation.
            if active is None or (active[0] != version and active[1] < sent):
                problems.append(f"activation of version {version} is lost: active is {active}")
        return problems

    def _check_models(self, client: httpx.Client, versions: list[tuple[int, str, int, float]]) -> list[str]:
        from device.checkpoint import load_checkpoint
        from device.numpy_model import NumpyResNet26, load_weights, weights_path_for
        from device.weights_delta import is_delta_path, load_delta, read_state

        problems: list[str] = []
        base = next((p for _v, p, _a, _c in sorted(versions) if not is_delta_path(p)), None)
        for version, path, _active, _created in versions:
            try:
                if is_delta_path(path):  # a trained version: a delta on the base, as the daemon reads it
                    delta = load_delta(path)
                    assert base is not None, "no full base version to apply the delta to"
                    NumpyResNet26(delta.config, delta.apply(read_state(weights_path_for(base))))
                else:
                    load_checkpoint(path)
                    load_weights(weights_path_for(path))
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                problems.append(f"model version {version} ({path}) does not load: {type(exc).__name__}: {exc}")
        active = [v for v, _p, a, _c in versions if a]
        x, _ = batch_for(1, 2)
        body, params = encode_raw_batch(x, context=JOB_CONTEXT)
        reply = client.post("/v1/predict", content=body, params=params,
                            headers={"content-type": "application/octet-stream"})
        if reply.status_code != 200:
            problems.append(f"/v1/predict answered {reply.status_code}: {reply.text[:200]}")
        else:
            # A job may promote a version between the snapshot and the prediction: either is right.
            active_after = (self._answer(client.get("/v1/models", params={"context": JOB_CONTEXT})) or {}).get("active")
            served = reply.json()["model_version"]
            if served not in (*active, active_after) or len(active) != 1:
                problems.append(f"/v1/predict used version {served}, the active one is {active} "
                                f"(then {active_after})")
        return problems


def sigkill_group(process: subprocess.Popen[bytes]) -> None:
    """The crash: SIGKILL to the daemon's whole process group, then wait until none of it is left."""
    _kill_group(process)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(60)
    deadline = time.monotonic() + 60
    while _group_alive(process.pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of group {process.pid} outlived SIGKILL by 60 s")
        time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    """Whether any process (zombies aside) is still in process group ``pgid``."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Fields after the command (which may hold spaces) in parentheses: state, ppid, pgrp.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _daemon_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TBFTD_")}
    for name in ("STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
