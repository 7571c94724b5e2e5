"""API benchmark: a real ``tbftd serve`` on loopback, measured as devices would use it, in one run.

Starts the daemon as a subprocess (the ``tbftd`` script beside this Python, else ``python -m
service.cli``) on 127.0.0.1 with a free ephemeral port, a temporary data directory and the
estimating meter, waits for ``/healthz``, then measures:

1. durable ingest: batches of 64 uint8 samples posted to ``/v1/samples`` as
   ``application/octet-stream`` (the cheapest device path) and, for comparison, as base64 JSON,
   by one device over one keep-alive connection, then by eight devices at once (what group commit
   is for); each with its p50/p99 and the store's commits per acknowledged batch (``/metrics``).
   Every acknowledged batch is committed with ``synchronous=FULL``, so these are durable rates;
2. ``/v1/predict`` latency (one sample per request) with the daemon idle and while a ``full`` job
   trains, and the ratio of the two p99s;
3. peak resident memory (RSS, sampled every 0.1 s for the whole run) of the daemon and of its
   trainer child, and of the two together;
4. fsyncs per acknowledged batch, one device and eight: a second daemon runs under ``strace -f
   --seccomp-bpf -e trace=fsync,fdatasync`` (only those calls stop it) and its calls are counted
   around each ingest (skipped, and said so, where strace is not installed);
5. models per context: a third daemon adapts ``fc`` for each of ``--contexts`` contexts (50; and
   one ``block1`` and one ``block3`` job), then reports the bytes each context's version takes
   on disk against the full model, the daemon's resident memory before and after, and
   ``/v1/predict`` latency spread over every context against one context, measured alternately.

One table with the figures, the targets and pass/fail, and JSON with every figure beside it.
The daemon is stopped with SIGTERM (SIGKILL after a timeout) whatever happens.

    python bench/api.py                      # 100 ingest batches, 200 predicts, 1,000 job samples
    python bench/api.py --quick              # a small run (CI, well under 90 s)
    python bench/api.py --base-model /tmp/bench-base.pt --json /tmp/api.json

Exit status: 0 when the run completed (targets missed or not), 1 when the daemon did not start or a
measurement failed, 3 with ``--check`` when a target was missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

#: The benchmark only ever talks to loopback.
HOST = "127.0.0.1"
BATCH_SAMPLES = 64
#: Devices posting at once in the concurrent ingest runs: their requests meet in group commits.
CONCURRENT_DEVICES = 8
#: Targets from issue 4 (a 2-core machine; a 1 GB Raspberry Pi 3 must run the daemon).
INGEST_TARGET_SAMPLES_PER_SECOND = 2000.0
P99_RATIO_TARGET = 3.0
MEMORY_TARGET_MB = 500.0
#: Issue 19: a context's fc version stores what differs from the base (fc is 650 parameters).
VERSION_SHARE_TARGET = 0.05
#: Issue 19: serving tens of contexts' models must not slow a prediction.
CONTEXTS_P99_RATIO_TARGET = 1.5
#: Seconds between two RSS samples.
RSS_INTERVAL_SECONDS = 0.1
#: PSS is read at every this many RSS samples (about 2 ms of CPU per process each time).
PSS_EVERY_SAMPLES = 5
#: Job states after which a job no longer runs.
FINISHED_STATES = ("succeeded", "failed", "cancelled", "interrupted")
#: Variables that would make the daemon read settings other than the ones given here.
_FOREIGN_ENV_PREFIXES = ("TBFTD_",)
_FOREIGN_ENV_NAMES = ("STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_MEGABYTE = 1024 * 1024


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


# --- results -----------------------------------------------------------------------------------


@dataclass
class Ingest:
    """Samples posted to ``/v1/samples`` in one wire form by ``devices`` clients at once."""

    form: str
    devices: int
    batches: int
    samples: int
    body_bytes: int
    seconds: float
    samples_per_second: float
    request_p50_ms: float
    request_p99_ms: float
    evicted: int
    #: Store transactions committed per acknowledged batch (each commit is one fsync of the WAL).
    commits_per_batch: float | None = None
    #: fsync and fdatasync calls per acknowledged batch, counted by strace (None: not counted).
    fsyncs_per_batch: float | None = None


@dataclass
class Latency:
    """``/v1/predict`` round trips of one sample each."""

    condition: str
    requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float


@dataclass
class Job:
    """The job that trained while latency was measured."""

    id: int
    samples: int
    seconds_to_running: float
    seconds_to_training: float
    phase_at_measurement: str | None
    running_throughout: bool
    state_after_measurement: str
    final_state: str
    seconds_to_cancel: float


@dataclass
class Contexts:
    """Models per context: what each context's version costs on disk and in memory, and whether
    serving many contexts slows a prediction."""

    contexts: int
    promoted: int
    seconds_adapting: float
    full_model_bytes: int
    #: File bytes of one context's version, per block trained (the median over contexts for fc).
    version_bytes: dict[str, float]
    daemon_rss_before_mb: float
    daemon_rss_after_mb: float
    one_context: Latency
    all_contexts: Latency

    @property
    def rss_per_context_kb(self) -> float:
        return 1024.0 * (self.daemon_rss_after_mb - self.daemon_rss_before_mb) / max(1, self.promoted)


@dataclass
class Memory:
    """Peak memory in MB (MiB, 2**20 bytes). RSS counts the shared library pages (torch) in each process, so the
    sum over two processes overstates what they hold together; PSS shares them out (sampled
    less often: it costs a read of ``/proc/PID/smaps_rollup``)."""

    daemon_peak_mb: float = 0.0
    daemon_peak_during_job_mb: float = 0.0
    trainer_peak_mb: float = 0.0
    daemon_plus_trainer_peak_mb: float = 0.0
    helpers_peak_mb: float = 0.0
    all_processes_peak_mb: float = 0.0
    daemon_pss_peak_mb: float = 0.0
    trainer_pss_peak_mb: float = 0.0
    daemon_plus_trainer_pss_peak_mb: float = 0.0
    samples: int = 0
    pss_samples: int = 0
    trainer_pids: list[int] = field(default_factory=list)


@dataclass
class Check:
    """One target and whether it was met (``passed`` None: not measured)."""

    name: str
    value: float | None
    target: str
    passed: bool | None


# --- the daemon --------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on loopback that is free right now (the daemon binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def daemon_command() -> list[str]:
    """``tbftd serve`` of this environment: the console script beside the interpreter, else ``-m``."""
    script = Path(sys.executable).parent / "tbftd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "serve"]
    return [sys.executable, "-m", "service.cli", "serve"]


def daemon_environment() -> dict[str, str]:
    """This environment without the variables that would reconfigure the daemon behind our back."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_FOREIGN_ENV_PREFIXES) and name not in _FOREIGN_ENV_NAMES
    }
    env["PYTHONUNBUFFERED"] = "1"
    # For the ``-m`` fallback when the package is not installed.
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """A function for ``preexec_fn`` that has the daemon sent SIGTERM when the benchmark dies,
    even by SIGKILL; None where there is no ``prctl`` (not Linux: only the finally blocks help)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return preexec


class Daemon:
    """A ``tbftd serve`` subprocess with its log file; :meth:`stop` ends it."""

    def __init__(self, argv: list[str], log_path: Path, cwd: Path, traced: bool = False) -> None:
        self.argv = argv
        #: Started under strace: the daemon is strace's child, and SIGTERM must go to it (strace
        #: itself would only detach and leave the daemon running).
        self.traced = traced
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        # A file, not a pipe: a pipe nobody reads would fill and block the daemon's logging.
        # Its own session: Ctrl+C reaches only the benchmark, which then stops the daemon in order.
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=cwd, env=daemon_environment(), start_new_session=True, preexec_fn=_die_with_parent(),
        )  # fmt: skip
        #: Descendants seen so far, as psutil processes (which notice a reused pid).
        self.known_children: dict[int, Any] = {}
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None
        self.killed = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the daemon's stderr and stdout."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, base_url: str, timeout_seconds: float) -> float:
        """Poll ``/healthz`` until it answers 200; returns the seconds it took.

        Raises :class:`BenchError` when the process exits first or the time runs out.
        """
        import httpx

        started = time.monotonic()
        with httpx.Client(base_url=base_url, trust_env=False, timeout=2.0) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise BenchError(f"the daemon exited with status {code} before it was ready")
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() - started > timeout_seconds:
                    raise BenchError(f"the daemon did not answer /healthz within {timeout_seconds:.0f} s")
                time.sleep(0.1)
        # Something else could hold the port if ours failed to bind: ours must still be alive.
        time.sleep(0.2)
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"the daemon exited with status {code} right after /healthz answered")
        return time.monotonic() - started

    def remember_children(self) -> None:
        """Note the daemon's children now, so that :meth:`stop` can end any it leaves behind."""
        import psutil

        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                self.known_children.setdefault(child.pid, child)

    def _terminate(self) -> None:
        import psutil

        if not self.traced:
            self.process.send_signal(signal.SIGTERM)
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children():
                child.send_signal(signal.SIGTERM)

    def stop(self, timeout_seconds: float) -> None:
        """SIGTERM, wait ``timeout_seconds``, then SIGKILL; then end children it left behind."""
        import psutil

        try:
            if self.process.poll() is None:
                self.remember_children()
                started = time.monotonic()
                self._terminate()
                try:
                    self.process.wait(timeout_seconds)
                except subprocess.TimeoutExpired:
                    self.killed = True
                    self.process.kill()
                    self.process.wait(10)
                self.stop_seconds = time.monotonic() - started
            self.exit_code = self.process.returncode
            # A trainer orphaned by a killed daemon would go on training: end it by its pid
            # (is_running() is False for a pid since reused by another process).
            for child in self.known_children.values():
                with contextlib.suppress(psutil.Error):
                    if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                        child.kill()
        finally:
            self._log.close()


# --- memory ------------------------------------------------------------------------------------


class MemorySampler:
    """Samples the RSS of the daemon and of every descendant every 0.1 s in a thread.

    A descendant started by ``multiprocessing`` spawn (``spawn_main`` in its command line) is the
    trainer; the resource tracker and anything else is a helper.
    """

    def __init__(self, pid: int, interval_seconds: float = RSS_INTERVAL_SECONDS) -> None:
        self.pid = pid
        self.interval_seconds = interval_seconds
        self.memory = Memory()
        self.in_job = threading.Event()
        self._stop = threading.Event()
        self._roles: dict[int, str] = {}
        self.processes: dict[int, Any] = {}
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.error: str | None = None

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _role(self, process: Any) -> str:
        role = self._roles.get(process.pid)
        if role is not None:
            return role
        self.processes.setdefault(process.pid, process)
        try:
            cmdline = " ".join(process.cmdline())
        except Exception:  # gone, or not readable yet
            return "helper"
        # Between fork and exec a new child still shows the daemon's command line: decide
        # only once it shows its own.
        if "spawn_main" in cmdline:
            role = "trainer"
            self.memory.trainer_pids.append(process.pid)
        elif "resource_tracker" in cmdline:
            role = "helper"
        else:
            return "helper"
        self._roles[process.pid] = role
        return role

    def _run(self) -> None:
        try:
            self._sample_until_stopped()
        except Exception as exc:  # reported by run_benchmark: peaks from a dead sampler would mislead
            self.error = f"the memory sampler failed: {type(exc).__name__}: {exc}"

    def _sample_until_stopped(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error as exc:
            self.error = f"cannot watch pid {self.pid}: {exc}"
            return
        m = self.memory
        while not self._stop.is_set():
            try:
                daemon_bytes = root.memory_info().rss
            except psutil.Error:
                return  # the daemon is gone
            with_pss = m.samples % PSS_EVERY_SAMPLES == 0
            daemon_pss = _pss(root) if with_pss else None
            trainer_bytes = helper_bytes = 0
            trainer_pss: float | None = 0.0
            try:
                children = root.children(recursive=True)
            except psutil.Error:
                children = []
            for child in children:
                try:
                    rss = child.memory_info().rss
                    role = self._role(child)
                except psutil.Error:
                    continue
                if role == "trainer":
                    trainer_bytes += rss
                    if with_pss:
                        pss = _pss(child)
                        trainer_pss = None if pss is None or trainer_pss is None else trainer_pss + pss
                else:
                    helper_bytes += rss
            if with_pss and daemon_pss is not None and trainer_pss is not None:
                m.pss_samples += 1
                m.daemon_pss_peak_mb = max(m.daemon_pss_peak_mb, daemon_pss / _MEGABYTE)
                m.trainer_pss_peak_mb = max(m.trainer_pss_peak_mb, trainer_pss / _MEGABYTE)
                m.daemon_plus_trainer_pss_peak_mb = max(m.daemon_plus_trainer_pss_peak_mb,
                                                        (daemon_pss + trainer_pss) / _MEGABYTE)
            m.samples += 1
            m.daemon_peak_mb = max(m.daemon_peak_mb, daemon_bytes / _MEGABYTE)
            if self.in_job.is_set():
                m.daemon_peak_during_job_mb = max(m.daemon_peak_during_job_mb, daemon_bytes / _MEGABYTE)
            m.trainer_peak_mb = max(m.trainer_peak_mb, trainer_bytes / _MEGABYTE)
            m.helpers_peak_mb = max(m.helpers_peak_mb, helper_bytes / _MEGABYTE)
            m.daemon_plus_trainer_peak_mb = max(m.daemon_plus_trainer_peak_mb,
                                                (daemon_bytes + trainer_bytes) / _MEGABYTE)
            m.all_processes_peak_mb = max(m.all_processes_peak_mb,
                                          (daemon_bytes + trainer_bytes + helper_bytes) / _MEGABYTE)
            self._stop.wait(self.interval_seconds)


def _pss(process: Any) -> float | None:
    """Proportional set size in bytes, or None where the kernel or permissions do not give it."""
    try:
        return float(process.memory_full_info().pss)
    except Exception:  # psutil.Error, or AttributeError where pss is not reported
        return None


# --- samples -----------------------------------------------------------------------------------


def make_samples(count: int, input_shape: tuple[int, int, int], num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images with labels 0..num_classes-1 in turn; each class brightens its own band of rows
    in its own channel, so a job has something to learn (and is less quick to stop early)."""
    rng = np.random.default_rng(seed)
    channels, height, _ = input_shape
    x = rng.integers(0, 96, size=(count, *input_shape), dtype=np.uint8)
    labels = np.arange(count, dtype=np.int64) % num_classes
    band = max(1, height // num_classes)
    for label in range(num_classes):
        rows = slice((label * band) % height, (label * band) % height + band)
        x[labels == label, label % channels, rows, :] += 128
    return x, labels


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q)) if seconds else float("nan")


def _check_response(response: Any, expected: int, what: str) -> dict[str, Any]:
    if response.status_code != expected:
        raise BenchError(f"{what}: HTTP {response.status_code}, expected {expected}: {response.text[:300]}")
    return response.json()


# --- measurements ------------------------------------------------------------------------------


def store_counters(client: Any) -> tuple[float, float]:
    """The store's writes and commits so far, from ``/metrics``."""
    text = client.get("/metrics").text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("tbftd_store_writes_total", "tbftd_store_commits_total"):
            values[name] = float(value)
    if len(values) != 2:
        raise BenchError("/metrics lacks tbftd_store_writes_total or tbftd_store_commits_total")
    return values["tbftd_store_writes_total"], values["tbftd_store_commits_total"]


def measure_ingest(client: Any, form: str, batches: int, input_shape: tuple[int, int, int], num_classes: int,
                   context: str, devices: int = 1, fsync_count: Callable[[], int] | None = None) -> Ingest:
    """Post ``batches`` batches of 64 samples in ``form`` (``octet-stream`` or ``json``), from
    ``devices`` threads at once, each over a keep-alive connection of its own."""
    import httpx

    from service.payloads import encode_json_batch, encode_raw_batch

    # A few distinct bodies, encoded before the clock starts: the client's encoding is not the
    # daemon's cost.
    requests: list[tuple[bytes, dict[str, str], dict[str, str]]] = []
    for seed in range(4):
        x, labels = make_samples(BATCH_SAMPLES, input_shape, num_classes, seed=100 + seed)
        if form == "octet-stream":
            body, params = encode_raw_batch(x, labels, context=context)
            requests.append((body, params, {"content-type": "application/octet-stream"}))
        else:
            body = json.dumps(encode_json_batch(x, labels, context=context)).encode()
            requests.append((body, {}, {"content-type": "application/json"}))
    for body, params, headers in requests[:2]:  # warm-up: thread pool, reader connections
        _check_response(client.post("/v1/samples", content=body, params=params, headers=headers), 201, "ingest warm-up")
    times: list[float] = []
    totals = {"evicted": 0, "body_bytes": 0}
    failures: list[BaseException] = []
    lock = threading.Lock()

    def device(index: int) -> None:
        mine = range(index, batches, devices)
        try:
            with httpx.Client(base_url=str(client.base_url), trust_env=False, timeout=60.0) as own:
                for i in mine:
                    body, params, headers = requests[i % len(requests)]
                    t0 = time.perf_counter()
                    response = own.post("/v1/samples", content=body, params=params, headers=headers)
                    elapsed = time.perf_counter() - t0
                    answer = _check_response(response, 201, f"ingest ({form})")
                    if answer.get("accepted") != BATCH_SAMPLES:
                        raise BenchError(f"ingest ({form}): {answer.get('accepted')} samples accepted of "
                                         f"{BATCH_SAMPLES}")
                    with lock:
                        times.append(elapsed)
                        totals["evicted"] += int(answer.get("evicted") or 0)
                        totals["body_bytes"] += len(body)
        except BaseException as exc:  # reported below, on the benchmark's thread
            failures.append(exc)

    writes_before, commits_before = store_counters(client)
    fsyncs_before = fsync_count() if fsync_count else None
    threads = [threading.Thread(target=device, args=(i,), name=f"device-{i}") for i in range(devices)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise failures[0] if isinstance(failures[0], BenchError) else BenchError(f"ingest ({form}): {failures[0]!r}")
    fsyncs = None if fsync_count is None or fsyncs_before is None else (fsync_count() - fsyncs_before) / batches
    _, commits_after = store_counters(client)
    samples = batches * BATCH_SAMPLES
    return Ingest(form, devices, batches, samples, totals["body_bytes"], seconds, samples / seconds,
                  percentile_ms(times, 50), percentile_ms(times, 99), totals["evicted"],
                  commits_per_batch=(commits_after - commits_before) / batches, fsyncs_per_batch=fsyncs)


def strace_command() -> list[str] | None:
    """The strace prefix that counts the daemon's fsyncs, or None where strace is missing."""
    import shutil

    found = shutil.which("strace")
    if found is None:
        return None
    # --seccomp-bpf stops the daemon only at the traced calls, so the rest runs at full speed.
    return [found, "-f", "-qq", "--seccomp-bpf", "-e", "trace=fsync,fdatasync", "-e", "signal=none"]


def count_fsyncs(trace: Path) -> int:
    """fsync and fdatasync calls strace has written to ``trace`` so far."""
    try:
        text = trace.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return sum(1 for line in text.splitlines() if "fsync(" in line or "fdatasync(" in line)


def measure_fsyncs(args: argparse.Namespace, workdir: Path, results: dict[str, Any], input_shape: tuple[int, int, int],
                   num_classes: int) -> list[Ingest] | None:
    """fsyncs per acknowledged batch with one device and with eight, on a daemon under strace."""
    import httpx

    prefix = strace_command()
    if prefix is None:
        results["fsyncs"] = {"skipped": "strace is not installed (apt-get install strace)"}
        return None
    trace = workdir / "fsyncs.trace"
    daemon, base_url = start_daemon(args, workdir, results, key="fsync_daemon", name="fsyncs",
                                    prefix=[*prefix, "-o", str(trace), "--"])
    runs: list[Ingest] = []
    try:
        with httpx.Client(base_url=base_url, trust_env=False, timeout=60.0) as client:
            for devices in (1, CONCURRENT_DEVICES):
                runs.append(measure_ingest(client, "octet-stream", args.fsync_batches, input_shape, num_classes,
                                           context=f"fsyncs-{devices}", devices=devices,
                                           fsync_count=lambda: count_fsyncs(trace)))
    finally:
        daemon.stop(args.stop_timeout)
    results["fsyncs"] = [asdict(run) for run in runs]
    return runs


def measure_predict(client: Any, requests: int, input_shape: tuple[int, int, int], condition: str,
                    contexts: list[str] | None = None) -> Latency:
    """``requests`` predictions of one sample each (octet-stream), one after another, to each of
    ``contexts`` in turn (default: the default context)."""
    from service.payloads import encode_raw_batch

    x, _ = make_samples(8, input_shape, 2, seed=7)
    names = contexts or [None]
    bodies = [encode_raw_batch(x[i % len(x) : i % len(x) + 1], context=names[i % len(names)])
              for i in range(max(len(x), len(names)))]
    headers = {"content-type": "application/octet-stream"}
    for body, params in bodies[:3]:  # warm-up
        _check_response(client.post("/v1/predict", content=body, params=params, headers=headers), 200, "predict warm-up")
    times: list[float] = []
    for i in range(requests):
        body, params = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        response = client.post("/v1/predict", content=body, params=params, headers=headers)
        times.append(time.perf_counter() - t0)
        answer = _check_response(response, 200, f"predict ({condition})")
        if len(answer.get("classes", ())) != 1:
            raise BenchError(f"predict ({condition}): expected one class, got {answer.get('classes')!r}")
    return Latency(condition, requests, percentile_ms(times, 50), percentile_ms(times, 99),
                   1000.0 * float(np.mean(times)), 1000.0 * max(times))


def post_job_samples(client: Any, count: int, input_shape: tuple[int, int, int], num_classes: int, context: str,
                     seed: int = 1) -> None:
    """Post ``count`` learnable samples to ``context`` in batches of at most 250."""
    from service.payloads import encode_raw_batch

    x, labels = make_samples(count, input_shape, num_classes, seed=seed)
    for start in range(0, count, 250):
        body, params = encode_raw_batch(x[start : start + 250], labels[start : start + 250], context=context)
        _check_response(client.post("/v1/samples", content=body, params=params,
                                    headers={"content-type": "application/octet-stream"}), 201, "job samples")


def wait_for(predicate: Any, timeout_seconds: float, what: str, interval_seconds: float = 0.2) -> Any:
    """Call ``predicate()`` until it returns something truthy; BenchError after the timeout."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        time.sleep(interval_seconds)


def job_state(client: Any, job_id: int) -> dict[str, Any]:
    return _check_response(client.get(f"/v1/jobs/{job_id}"), 200, f"GET /v1/jobs/{job_id}")


def measure_during_job(client: Any, args: argparse.Namespace, input_shape: tuple[int, int, int], num_classes: int,
                       sampler: MemorySampler, daemon: Daemon) -> tuple[Latency, Job]:
    """Start a ``full`` job, wait until it trains, measure predictions, cancel it, wait for its end."""
    context = "bench"
    post_job_samples(client, args.job_samples, input_shape, num_classes, context)
    sampler.in_job.set()
    started = time.monotonic()
    job = _check_response(client.post("/v1/jobs", json={"context": context, "block": "full"}), 201, "POST /v1/jobs")
    job_id = int(job["id"])
    print(f"  job {job_id} queued on {args.job_samples} samples; waiting until it trains", file=sys.stderr, flush=True)

    def progress_if_running(waiting_for: str) -> dict[str, Any] | None:
        """The job's progress while the daemon runs it (``{}`` before the first report), else None."""
        status = _check_response(client.get("/v1/status"), 200, "GET /v1/status")
        current = status.get("running_job")
        if current and current.get("id") == job_id:
            return current.get("progress") or {}
        row = job_state(client, job_id)
        if row["state"] in FINISHED_STATES:
            raise BenchError(f"job {job_id} ended ({row['state']}: {row.get('error')}) before {waiting_for}")
        return None

    wait_for(lambda: progress_if_running("it ran") is not None, args.start_timeout, f"job {job_id} to run")
    seconds_to_running = time.monotonic() - started
    wait_for(lambda: (progress_if_running("it trained") or {}).get("phase") in ("train", "validate"),
             args.start_timeout, f"job {job_id} to reach its training phase")
    seconds_to_training = time.monotonic() - started
    # Past loading the model and the samples and the first evaluation; let the trainer settle.
    time.sleep(args.settle_seconds)
    daemon.remember_children()
    progress = progress_if_running("latency could be measured (early stopping?)") or {}
    print(f"  measuring /predict while job {job_id} trains (epoch {progress.get('epoch')}/{progress.get('epochs')})",
          file=sys.stderr, flush=True)
    latency = measure_predict(client, args.predict_requests, input_shape, "training")
    state_after = job_state(client, job_id)["state"]
    cancel_started = time.monotonic()
    if state_after == "running":
        _check_response(client.delete(f"/v1/jobs/{job_id}"), 200, f"DELETE /v1/jobs/{job_id}")

    def finished() -> dict[str, Any] | None:
        row = job_state(client, job_id)
        return row if row["state"] in FINISHED_STATES else None

    final = wait_for(finished, args.stop_timeout, f"job {job_id} to end after its cancellation")
    seconds_to_cancel = time.monotonic() - cancel_started
    # The daemon clears running_job just after the row is final; wait, so the trainer has exited.
    wait_for(lambda: not _check_response(client.get("/v1/status"), 200, "GET /v1/status").get("running_job"),
             args.stop_timeout, "the daemon to report no running job")
    sampler.in_job.clear()
    return latency, Job(
        id=job_id,
        samples=args.job_samples,
        seconds_to_running=seconds_to_running,
        seconds_to_training=seconds_to_training,
        phase_at_measurement=progress.get("phase"),
        running_throughout=state_after == "running",
        state_after_measurement=state_after,
        final_state=final["state"],
        seconds_to_cancel=seconds_to_cancel,
    )


# --- the run -----------------------------------------------------------------------------------


def measure_contexts(args: argparse.Namespace, workdir: Path, results: dict[str, Any], input_shape: tuple[int, int, int]) -> None:
    """Section 5 of the module docstring, on a daemon of its own (the first one's ``--epochs``
    is for a job that must outlast a measurement; these take the profile's)."""
    import httpx
    import psutil

    if args.contexts < 1:
        results["contexts"] = {"skipped": "--contexts 0"}
        return
    daemon, base_url = start_daemon(args, workdir, results, key="contexts_daemon", name="contexts",
                                    extra=["--epochs", "10"])
    try:
        with httpx.Client(base_url=base_url, trust_env=False, timeout=60.0) as client:
            names = [f"ctx-{i:02d}" for i in range(args.contexts)]
            blocks = {name: "fc" for name in names}
            if not args.quick:
                blocks.update({"ctx-block1": "block1", "ctx-block3": "block3"})
            measure_predict(client, 20, input_shape, "warm-up", names)
            rss_before = psutil.Process(daemon.pid).memory_info().rss / _MEGABYTE
            started = time.perf_counter()
            jobs = {}
            for i, (name, block) in enumerate(blocks.items()):
                post_job_samples(client, 40, input_shape, 4, name, seed=100 + i)
                reply = client.post("/v1/jobs", json={"context": name, "block": block})
                jobs[name] = _check_response(reply, 201, f"job for {name}")["id"]
            finished = {name: wait_for(lambda j=job_id: (s := job_state(client, j))["state"] in FINISHED_STATES and s,
                                       args.start_timeout + 60 * len(jobs), f"the job of {name}")
                        for name, job_id in jobs.items()}
            seconds = time.perf_counter() - started
            failed = {n: j["error"] for n, j in finished.items() if j["state"] != "succeeded"}
            if failed:
                raise BenchError(f"context jobs failed: {failed}")
            sizes: dict[str, list[int]] = {}
            for name, job in finished.items():
                if job["model_version_out"] is not None:
                    version = client.get("/v1/models", params={"context": name}).json()["versions"][0]
                    sizes.setdefault(blocks[name], []).append(Path(version["path"]).stat().st_size)
            base = Path(client.get("/v1/models").json()["versions"][-1]["path"])
            promoted = sum(1 for name in names if finished[name]["decision"].get("promoted"))
            one, every = [], []
            for _ in range(max(1, args.predict_requests // 20)):  # alternating: both see the same load
                one.append(measure_predict(client, 10, input_shape, "one context", names[:1]))
                every.append(measure_predict(client, 10, input_shape, f"{len(names)} contexts", names))
            rss_after = psutil.Process(daemon.pid).memory_info().rss / _MEGABYTE
    finally:
        daemon.stop(args.stop_timeout)
    result = Contexts(
        contexts=len(names), promoted=promoted, seconds_adapting=seconds,
        full_model_bytes=base.stat().st_size + base.with_suffix(".npz").stat().st_size,
        version_bytes={block: float(np.median(values)) for block, values in sizes.items()},
        daemon_rss_before_mb=rss_before, daemon_rss_after_mb=rss_after,
        one_context=_pooled(one), all_contexts=_pooled(every),
    )
    results["contexts"] = {**asdict(result), "rss_per_context_kb": result.rss_per_context_kb}


def _pooled(runs: list[Latency]) -> Latency:
    """Latency figures of several short runs taken together (from their p50/p99, weighted)."""
    weights = np.array([r.requests for r in runs], dtype=float)
    return Latency(runs[0].condition, int(weights.sum()), float(np.median([r.p50_ms for r in runs])),
                   float(np.max([r.p99_ms for r in runs])), float(np.average([r.mean_ms for r in runs], weights=weights)),
                   float(max(r.max_ms for r in runs)))


def model_info(base_model: Path) -> tuple[tuple[int, int, int], int]:
    """Input shape and class count of the base model the daemon will serve."""
    from device.checkpoint import CheckpointError, load_checkpoint

    try:
        config = load_checkpoint(base_model).config
    except (CheckpointError, OSError) as exc:
        raise BenchError(f"cannot read the base model: {exc}") from exc
    return tuple(config.input_shape), int(config.num_classes)  # type: ignore[return-value]


def run_benchmark(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Everything between starting and stopping the daemon; fills ``results`` as it goes."""
    import httpx

    input_shape, num_classes = model_info(args.base_model)
    results["model"] = {"path": str(args.base_model), "input_shape": list(input_shape), "num_classes": num_classes}
    with tempfile.TemporaryDirectory(prefix="tbftd-bench-api-") as workdir:
        daemon: Daemon | None = None
        sampler: MemorySampler | None = None
        try:
            daemon, base_url = start_daemon(args, Path(workdir), results)
            sampler = MemorySampler(daemon.pid)
            with sampler, httpx.Client(base_url=base_url, trust_env=False, timeout=60.0) as client:
                print(f"  ready in {results['daemon']['seconds_to_ready']:.1f} s; ingest", file=sys.stderr, flush=True)
                results["ingest"] = []
                for form, devices in (("octet-stream", 1), ("json", 1), ("octet-stream", CONCURRENT_DEVICES)):
                    batches = args.batches if devices == 1 else 2 * args.batches
                    run = measure_ingest(client, form, batches, input_shape, num_classes,
                                         context=f"ingest-{form}-{devices}", devices=devices)
                    results["ingest"].append(asdict(run))
                    print(f"  ingest {form}, {devices} device(s): {run.samples_per_second:,.0f} samples/s, "
                          f"{run.commits_per_batch:.2f} commits per batch", file=sys.stderr, flush=True)
                results["latency"] = []
                idle = measure_predict(client, args.predict_requests, input_shape, "idle")
                results["latency"].append(asdict(idle))
                print(f"  predict idle: p50 {idle.p50_ms:.1f} ms, p99 {idle.p99_ms:.1f} ms", file=sys.stderr, flush=True)
                busy, job = measure_during_job(client, args, input_shape, num_classes, sampler, daemon)
                results["latency"].append(asdict(busy))
                results["job"] = asdict(job)
                print(f"  predict training: p50 {busy.p50_ms:.1f} ms, p99 {busy.p99_ms:.1f} ms", file=sys.stderr, flush=True)
            if sampler.error:
                raise BenchError(sampler.error)
        except BaseException:
            if daemon is not None:
                results["daemon"]["log_tail"] = daemon.log_tail()
            raise
        finally:
            if sampler is not None:
                results["memory"] = asdict(sampler.memory)
            if daemon is not None:
                if sampler is not None:
                    for pid, process in sampler.processes.items():
                        daemon.known_children.setdefault(pid, process)
                daemon.stop(args.stop_timeout)
                results["daemon"].update(exit_code=daemon.exit_code, stop_seconds=daemon.stop_seconds,
                                         killed=daemon.killed)
        # A daemon of its own, after the first has stopped: strace must not slow what was timed above.
        print("  counting fsyncs per acknowledged batch under strace", file=sys.stderr, flush=True)
        measure_fsyncs(args, Path(workdir), results, input_shape, num_classes)
        print(f"  adapting {args.contexts} contexts, each its own model", file=sys.stderr, flush=True)
        measure_contexts(args, Path(workdir), results, input_shape)


def start_daemon(args: argparse.Namespace, workdir: Path, results: dict[str, Any], key: str = "daemon",
                 name: str = "data", prefix: list[str] | None = None,
                 extra: list[str] | None = None) -> tuple[Daemon, str]:
    """Start ``tbftd serve`` on a free loopback port and wait until it is ready; returns it and its URL.

    Its data go to ``workdir / name``, what is known of it to ``results[key]``; ``prefix`` runs it
    under another command (strace). Retries on a new port when another process took the port
    first; otherwise a daemon that does not start is a :class:`BenchError` carrying the tail of
    its output.
    """
    for attempt in range(3):
        port = free_port()
        argv = [*(prefix or []), *daemon_command()] + [
            "--host", HOST, "--port", str(port), "--data-dir", str(workdir / name),
            "--base-model", str(args.base_model), "--meter-kind", "estimate", "--baseline-seconds", "0",
            "--epochs", str(args.epochs), "--log-level", "info", *(extra or []), *shlex.split(args.daemon_args),
        ]  # fmt: skip
        base_url = f"http://{HOST}:{port}"
        daemon = Daemon(argv, workdir / f"{name}-daemon-{attempt}.log", cwd=workdir, traced=prefix is not None)
        results[key] = {"argv": argv, "pid": daemon.pid, "port": port}
        print(f"starting the daemon on {base_url} (pid {daemon.pid})", file=sys.stderr, flush=True)
        try:
            results[key]["seconds_to_ready"] = daemon.wait_healthy(base_url, args.start_timeout)
            return daemon, base_url
        except BaseException as exc:
            daemon.stop(args.stop_timeout)
            tail = daemon.log_tail()
            results[key].update(exit_code=daemon.exit_code, stop_seconds=daemon.stop_seconds,
                                killed=daemon.killed, log_tail=tail)
            if not isinstance(exc, BenchError):
                raise
            if "address already in use" in tail.lower() and attempt < 2:
                continue  # another process took the port between free_port() and the bind
            raise BenchError(f"{exc}\n--- daemon output (last lines) ---\n{tail}") from None
    raise AssertionError("unreachable")


def checks(results: dict[str, Any]) -> list[Check]:
    """The targets against what was measured."""
    ingest = {(run["form"], run["devices"]): run for run in results.get("ingest", [])}
    latency = {run["condition"]: run for run in results.get("latency", [])}
    # One device waits for every commit of its own: the durable rate's worst case.
    raw = ingest.get(("octet-stream", 1), {}).get("samples_per_second")
    fsync_runs = results.get("fsyncs")
    grouped = None
    if isinstance(fsync_runs, list):
        grouped = next((r["fsyncs_per_batch"] for r in fsync_runs if r["devices"] == CONCURRENT_DEVICES), None)
    ratio = None
    if "idle" in latency and "training" in latency:
        ratio = latency["training"]["p99_ms"] / latency["idle"]["p99_ms"]
    memory = results.get("memory", {}).get("daemon_plus_trainer_peak_mb")
    job_ok = results.get("job", {}).get("running_throughout", False)
    trainer_seen = bool(results.get("memory", {}).get("trainer_pids"))
    contexts = results.get("contexts") or {}
    fc_share = per_context_ratio = None
    if "version_bytes" in contexts and contexts["version_bytes"].get("fc"):
        fc_share = contexts["version_bytes"]["fc"] / contexts["full_model_bytes"]
    if "one_context" in contexts:
        per_context_ratio = contexts["all_contexts"]["p99_ms"] / contexts["one_context"]["p99_ms"]
    context_rss = contexts.get("daemon_rss_after_mb")
    return [
        Check("fc version bytes per context / full model", fc_share, f"<= {VERSION_SHARE_TARGET:g}",
              None if fc_share is None else fc_share <= VERSION_SHARE_TARGET),
        Check("predict p99 all contexts / one context", per_context_ratio, f"<= {CONTEXTS_P99_RATIO_TARGET:g}x",
              None if per_context_ratio is None else per_context_ratio <= CONTEXTS_P99_RATIO_TARGET),
        Check("daemon RSS with every context's model MB", context_rss, f"<= {MEMORY_TARGET_MB:,.0f}",
              None if context_rss is None else context_rss <= MEMORY_TARGET_MB),
        Check("durable ingest octet-stream samples/s, 1 device", raw, f">= {INGEST_TARGET_SAMPLES_PER_SECOND:,.0f}",
              None if raw is None else raw >= INGEST_TARGET_SAMPLES_PER_SECOND),
        # Group commit: devices posting at once share commits, so fewer than one fsync a batch.
        Check(f"fsyncs per batch, {CONCURRENT_DEVICES} devices", grouped, "< 1",
              None if grouped is None else grouped < 1.0),
        # A ratio measured after the job had ended says nothing about training: not a pass.
        Check("predict p99 training / idle", ratio, f"<= {P99_RATIO_TARGET:g}x",
              None if ratio is None else (ratio <= P99_RATIO_TARGET and job_ok)),
        Check("peak RSS daemon + trainer MB", memory, f"<= {MEMORY_TARGET_MB:,.0f}",
              None if memory is None else (memory <= MEMORY_TARGET_MB and trainer_seen)),
    ]


def format_table(results: dict[str, Any], checked: list[Check]) -> str:
    """Figures, targets and pass/fail as a fixed-width text table."""
    verdict = {True: "pass", False: "FAIL", None: "-"}
    rows: list[tuple[str, str, str, str]] = []
    for run in results.get("ingest", []):
        devices = f"{run['devices']} device{'s' * (run['devices'] != 1)}"
        rows.append((f"durable ingest {run['form']}, {devices} ({BATCH_SAMPLES}/batch, {run['batches']} batches)",
                     f"{run['samples_per_second']:,.0f} samples/s", "", ""))
        rows.append(("  request p50 / p99", f"{run['request_p50_ms']:.1f} / {run['request_p99_ms']:.1f} ms", "", ""))
        rows.append(("  store commits per batch", f"{run['commits_per_batch']:.2f}", "", ""))
    fsyncs = results.get("fsyncs")
    if isinstance(fsyncs, dict):
        rows.append(("fsyncs per batch", f"not counted: {fsyncs.get('skipped')}", "", ""))
    for run in fsyncs if isinstance(fsyncs, list) else []:
        rows.append((f"fsyncs per batch, {run['devices']} device{'s' * (run['devices'] != 1)} (strace, "
                     f"{run['batches']} batches)", f"{run['fsyncs_per_batch']:.2f} "
                     f"({run['commits_per_batch']:.2f} commits)", "", ""))
    for run in results.get("latency", []):
        rows.append((f"predict 1 sample, {run['condition']} ({run['requests']} requests)",
                     f"p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms", "", ""))
    memory = results.get("memory")
    if memory:
        rows.append(("peak RSS daemon (whole run)", f"{memory['daemon_peak_mb']:.0f} MB", "", ""))
        rows.append(("peak RSS daemon (during the job)", f"{memory['daemon_peak_during_job_mb']:.0f} MB", "", ""))
        rows.append(("peak RSS trainer child", f"{memory['trainer_peak_mb']:.0f} MB", "", ""))
        rows.append(("peak RSS helpers (resource tracker)", f"{memory['helpers_peak_mb']:.0f} MB", "", ""))
        if memory["pss_samples"]:
            rows.append(("peak PSS daemon / trainer / sum (shared pages split)",
                         f"{memory['daemon_pss_peak_mb']:.0f} / {memory['trainer_pss_peak_mb']:.0f} / "
                         f"{memory['daemon_plus_trainer_pss_peak_mb']:.0f} MB", "", ""))
    contexts = results.get("contexts") or {}
    if "version_bytes" in contexts:
        adapted = f"{contexts['contexts']} in {contexts['seconds_adapting']:.0f} s"
        rows.append((f"contexts adapted (fc, {contexts['promoted']} promoted)", adapted, "", ""))
        rows.append(("full model on disk (base .pt + .npz)", f"{contexts['full_model_bytes'] / 1024:,.0f} KiB", "", ""))
        for block, size in contexts["version_bytes"].items():
            share = f"{size / 1024:,.1f} KiB ({size / contexts['full_model_bytes']:.3f} of the full model)"
            rows.append((f"  one context's {block} version on disk", share, "", ""))
        rss = (f"{contexts['daemon_rss_before_mb']:.0f} / {contexts['daemon_rss_after_mb']:.0f} MB "
               f"({contexts['rss_per_context_kb']:.0f} KiB a context)")
        rows.append(("daemon RSS before / after the contexts' models", rss, "", ""))
        for key in ("one_context", "all_contexts"):
            run = contexts[key]
            rows.append((f"predict 1 sample, {run['condition']} ({run['requests']} requests, alternating)",
                         f"p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms", "", ""))
    for c in checked:
        unit = "{:.2f}x" if "/ idle" in c.name or "/ one" in c.name else "{:.3f}" if "/ full" in c.name else "{:.0f} MB" if c.name.endswith("MB") else \
            "{:.2f}" if c.name.startswith("fsyncs") else "{:,.0f}"
        value = "not measured" if c.value is None else unit.format(c.value)
        rows.append((c.name, value, c.target, verdict[c.passed]))
    header = ("measure", "value", "target", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "-" * (sum(widths) + 6)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """The machine: cores this process may use, platform, Python, load average."""
    return {
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from device.shipped import SHIPPED_BASE_MODEL

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="20 ingest batches, 50 predicts, 300 job samples, 40 strace'd batches, 4 contexts (CI)")
    parser.add_argument("--base-model", type=Path, default=SHIPPED_BASE_MODEL,
                        help="checkpoint the daemon starts from (default: the shipped base model)")
    parser.add_argument("--batches", type=int, default=100, help="ingest batches per wire form")
    parser.add_argument("--fsync-batches", type=int, default=100,
                        help="batches per device count while fsyncs are counted under strace")
    parser.add_argument("--predict-requests", type=int, default=200, help="predictions idle and while training")
    parser.add_argument("--job-samples", type=int, default=1000, help="samples the job trains on")
    parser.add_argument("--epochs", type=int, default=50, help="the daemon's --epochs: the job must outlast the measurement")
    parser.add_argument("--settle-seconds", type=float, default=3.0, help="wait after the job starts training")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for the daemon or the job to start")
    parser.add_argument("--stop-timeout", type=float, default=30.0, help="seconds to wait for the job or the daemon to stop")
    parser.add_argument("--daemon-args", default="", metavar="ARGS",
                        help="more flags for tbftd serve, e.g. \"--batch-size 32\" (later flags win)")
    parser.add_argument("--contexts", type=int, default=50, help="contexts adapted, each its own model (0: skip)")
    parser.add_argument("--check", action="store_true", help="exit 3 when a target is missed")
    parser.add_argument("--json", type=Path, help="where to write the JSON (default: bench/results/api-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.predict_requests, args.job_samples, args.fsync_batches = 20, 50, 300, 40
        args.contexts = min(args.contexts, 4)
    for name in ("batches", "predict_requests", "fsync_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.job_samples < 50:
        parser.error("--job-samples must be at least 50 (a job needs training and validation samples of each class)")
    if not args.base_model.is_file():
        parser.error(f"base model {args.base_model} not found; pass --base-model (a development one: python -c "
                     "'from device.checkpoint import save_checkpoint; from device.model import ResNet26; "
                     "save_checkpoint(\"/tmp/bench-base.pt\", ResNet26())')")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A CI timeout sends SIGTERM: unwind through the finally blocks, which stop the daemon.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.perf_counter()
    results: dict[str, Any] = {"machine_at_start": machine()}
    print(f"API benchmark: {args.batches} ingest batches per form, {args.predict_requests} predictions per "
          f"condition, a full job on {args.job_samples} samples; {results['machine_at_start']['cpus']} cores, "
          f"load average {results['machine_at_start']['load_average_1_5_15']}", file=sys.stderr, flush=True)
    error: str | None = None
    try:
        run_benchmark(args, results)
    except BenchError as exc:
        error = str(exc)
    except KeyboardInterrupt as exc:
        error = f"interrupted ({exc.args[0] if exc.args else 'SIGINT'})"
    results["machine_at_end"] = machine()
    checked = checks(results)
    m = results["machine_at_start"]
    print(f"\nmachine: {m['cpus']} cores, {m['platform']}, Python {m['python']}, load average "
          f"{m['load_average_1_5_15']} at start, {results['machine_at_end']['load_average_1_5_15']} at end")
    job = results.get("job")
    if job:
        print(f"job {job['id']}: training after {job['seconds_to_training']:.1f} s, "
              f"{'ran throughout the measurement' if job['running_throughout'] else 'ENDED during the measurement (' + job['state_after_measurement'] + ')'}, "
              f"{job['final_state']} {job['seconds_to_cancel']:.1f} s after the cancel")
    daemon = results.get("daemon", {})
    if "exit_code" in daemon:
        ready = daemon.get("seconds_to_ready")
        stopped = daemon.get("stop_seconds")
        ready_text = f"ready in {ready:.1f} s" if ready is not None else "never ready"
        stopped_text = f"stopped in {stopped:.1f} s" if stopped is not None else "stopped"
        print(f"daemon: {ready_text}, {stopped_text} with exit status "
              f"{daemon['exit_code']}{' after SIGKILL' if daemon.get('killed') else ''}")
    print(format_table(results, checked))
    out = args.json or Path(__file__).resolve().parent / "results" / f"api-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}
    document = {
        "meta": {"settings": settings, "total_seconds": time.perf_counter() - started, "error": error},
        **results,
        "targets": [asdict(c) for c in checked],
    }
    out.write_text(json.dumps(document, indent=2, default=str))
    print(f"\nJSON: {out}")
    if error is not None:
        print(f"\nbench/api.py: error: {error}", file=sys.stderr)
        return 1
    if args.check and any(c.passed is not True for c in checked):
        return 3
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
