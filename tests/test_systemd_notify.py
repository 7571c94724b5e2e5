"""sd_notify: the protocol on real AF_UNIX datagram sockets, the watchdog on a real event loop, and
a real ``tbftd serve`` process telling a fake systemd that it is ready, busy, alive and stopping."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.systemd_notify import NOTIFY_VARIABLES, Notifier, notify, status_updates, watchdog_pings

# -- helpers (test_shutdown.py uses them too) --------------------------------------------------------


class NotifySocket:
    """A fake systemd: a bound AF_UNIX datagram socket and a thread that records what arrives.

    ``address`` is what ``NOTIFY_SOCKET`` gets: a path, or ``@name`` for the abstract namespace.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []  # (monotonic seconds, datagram)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    @classmethod
    def abstract(cls) -> NotifySocket:
        return cls(f"@tbftd-test-{uuid.uuid4().hex}")

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def lines(self) -> list[str]:
        """Every ``KEY=VALUE`` line received so far, in order."""
        with self._lock:
            return [line for _, message in self.messages for line in message.split("\n")]

    def wait_for(self, predicate: Any, timeout_seconds: float = 60.0, what: str = "") -> str:
        """The first line satisfying ``predicate`` (a prefix string or a callable); fails on timeout."""
        check = (lambda line: line.startswith(predicate)) if isinstance(predicate, str) else predicate
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            for line in self.lines():
                if check(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no {what or predicate!r} in {timeout_seconds} s; received {self.lines()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_base_model(path: Path) -> Path:
    """A small untrained 4-class base model (the shipped one may not exist yet)."""
    import torch

    from device.checkpoint import save_checkpoint
    from device.model import ModelConfig, ResNet26

    torch.manual_seed(0)
    return save_checkpoint(path, ResNet26(ModelConfig(num_classes=4)))


class DaemonProcess:
    """``tbftd serve`` as a real process (``python -m service.cli``), its stderr in a file."""

    def __init__(self, data_dir: Path, base_model: Path, args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = data_dir.parent / f"daemon-{self.port}.stderr"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TBFTD_") and k not in NOTIFY_VARIABLES}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port), "--data-dir", str(data_dir),
             "--base-model", str(base_model), "--trainer-threads", "1", *args],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr_path.open("wb"),
            env={**clean, **(env or {})},
        )
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_healthy(self, timeout_seconds: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}: {self.stderr()}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"daemon did not answer in {timeout_seconds} s: {self.stderr()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout_seconds: float) -> int:
        try:
            return self.process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"daemon still running after {timeout_seconds} s: {self.stderr()}") from None

    def close(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# -- the protocol --------------------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX socket paths are limited to 107 bytes."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="tbftd-"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def test_notify_reaches_a_path_socket_and_an_abstract_one(short_dir: Path) -> None:
    for listener in (NotifySocket(str(short_dir / "notify")), NotifySocket.abstract()):
        try:
            notify(listener.address, "READY=1\nSTATUS=hello")
            assert listener.wait_for("STATUS=", 5) == "STATUS=hello"
            assert listener.lines() == ["READY=1", "STATUS=hello"]
        finally:
            listener.close()


def test_notifier_messages(short_dir: Path) -> None:
    listener = NotifySocket(str(short_dir / "notify"))
    try:
        notifier = Notifier(listener.address)
        assert notifier.ready("idle, 0 samples buffered")
        assert notifier.status("training job 17 (fc),\nepoch 3/10")  # a newline would start a new key
        assert notifier.status("x" * 500)
        assert notifier.watchdog()
        assert notifier.stopping()
        listener.wait_for("STOPPING=1", 5)
        lines = listener.lines()
        assert lines[:3] == ["READY=1", "STATUS=idle, 0 samples buffered", "STATUS=training job 17 (fc), epoch 3/10"]
        assert lines[3].startswith("STATUS=xxx") and len(lines[3]) <= len("STATUS=") + 200
        assert lines[4:] == ["WATCHDOG=1", "STOPPING=1"]
    finally:
        listener.close()


def test_nothing_is_sent_without_notify_socket_and_a_dead_socket_is_not_fatal(short_dir: Path) -> None:
    quiet = Notifier.from_environment({}, pid=123)
    assert not quiet.enabled and quiet.watchdog_interval_seconds is None
    assert not quiet.ready() and not quiet.watchdog() and not quiet.stopping()
    gone = Notifier(str(short_dir / "nobody-listens"))
    assert gone.enabled and not gone.ready() and not gone.status("still fine")


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "30000000"}, 15.0),
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # someone else's
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "soon"}, None),
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "0"}, None),
        ({"NOTIFY_SOCKET": "/run/notify"}, None),
        ({"WATCHDOG_USEC": "30000000"}, None),  # no socket to ping
    ],
)
def test_watchdog_only_when_systemd_asks_this_process(environ: dict[str, str], interval: float | None) -> None:
    notifier = Notifier.from_environment(dict(environ), pid=4242)
    assert notifier.watchdog_interval_seconds == interval


def _notify_variables_seen_by_a_spawned_child() -> dict[str, str]:
    return {name: os.environ[name] for name in NOTIFY_VARIABLES if name in os.environ}


def test_the_variables_are_removed_so_spawned_children_do_not_inherit_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@tbftd-inherit-test")
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:  # what the daemon's trainer gets, before the notifier reads them
        assert set(pool.apply(_notify_variables_seen_by_a_spawned_child)) == set(NOTIFY_VARIABLES)
    notifier = Notifier.from_environment()
    assert notifier.socket_path == "@tbftd-inherit-test" and notifier.watchdog_interval_seconds == 1.0
    assert not any(name in os.environ for name in NOTIFY_VARIABLES)
    with context.Pool(1) as pool:
        assert pool.apply(_notify_variables_seen_by_a_spawned_child) == {}


# -- the watchdog and status tasks on a real event loop ----------------------------------------------


def _drain(sock: socket.socket) -> list[str]:
    received = []
    while True:
        try:
            received.append(sock.recv(65536, socket.MSG_DONTWAIT).decode())
        except BlockingIOError:
            return received


def test_watchdog_pings_stop_while_the_event_loop_is_blocked(short_dir: Path) -> None:
    address = str(short_dir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        notifier = Notifier(address, watchdog_seconds=0.2)  # a ping every 0.1 s

        async def scenario() -> tuple[list[str], list[str], list[str]]:
            task = asyncio.create_task(watchdog_pings(notifier))
            await asyncio.sleep(1.0)
            before = _drain(sock)
            time.sleep(1.5)  # noqa: ASYNC251 - on purpose: the loop is blocked for fifteen ping intervals
            during = _drain(sock)
            await asyncio.sleep(1.0)
            after = _drain(sock)
            task.cancel()
            return before, during, after

        before, during, after = asyncio.run(scenario())
    assert len(before) >= 3 and set(before) == {"WATCHDOG=1"}
    assert during == []  # no ping from another thread keeps a hung daemon alive
    assert len(after) >= 3 and set(after) == {"WATCHDOG=1"}


def test_no_watchdog_task_without_a_watchdog() -> None:
    async def scenario() -> None:
        await asyncio.wait_for(watchdog_pings(Notifier("/run/notify", watchdog_seconds=None)), 1.0)

    asyncio.run(scenario())


def test_status_updates_send_changes_only(short_dir: Path) -> None:
    listener = NotifySocket(str(short_dir / "notify"))
    texts = iter(["idle, 0 samples buffered", "idle, 0 samples buffered", "training job 1 (fc), epoch 1/3"])

    async def describe() -> str:
        text = next(texts, None)
        if text is None:
            raise RuntimeError("the database went away")  # logged; the task goes on
        return text

    async def scenario() -> None:
        task = asyncio.create_task(status_updates(Notifier(listener.address), describe, 0.05))
        await asyncio.sleep(0.5)
        assert not task.done()
        task.cancel()

    try:
        asyncio.run(scenario())
        listener.wait_for("STATUS=training", 5)
        assert listener.lines() == ["STATUS=idle, 0 samples buffered", "STATUS=training job 1 (fc), epoch 1/3"]
    finally:
        listener.close()


def test_the_daemon_servers_watchdog_runs_on_its_event_loop(tmp_path: Path, short_dir: Path) -> None:
    """The real server wiring in-process: a blocked uvicorn loop stops the pings."""
    import uvicorn

    from service.app import create_app
    from service.serve import daemon_server_class
    from service.settings import load_settings

    settings = load_settings(env={}, overrides={
        "data_dir": tmp_path / "data", "base_model": make_base_model(tmp_path / "base.pt"), "meter_kind": "estimate",
        "port": free_port(),
    })
    app = create_app(settings)
    address = str(short_dir / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, timeout_graceful_shutdown=1)
    server = daemon_server_class()(config, app=app, notifier=Notifier(address, watchdog_seconds=0.4))
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        time.sleep(1.0)
        counts: list[list[str]] = []
        blocked = threading.Event()

        def block_the_loop() -> None:  # runs on the server's loop, as a hung handler would
            counts.append(_drain(sock))
            time.sleep(2.0)
            counts.append(_drain(sock))
            blocked.set()

        loops[0].call_soon_threadsafe(block_the_loop)
        assert blocked.wait(30)
        time.sleep(1.0)
        counts.append(_drain(sock))
        before, during, after = counts
        assert before[0].startswith("READY=1\nSTATUS=idle, 0 samples buffered")
        assert before.count("WATCHDOG=1") >= 2
        assert during == []
        assert after.count("WATCHDOG=1") >= 2
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
    assert not thread.is_alive()


# -- a real daemon process ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_daemon_tells_systemd_ready_status_watchdog_and_stopping(tmp_path: Path) -> None:
    from service.payloads import encode_json_batch
    from tests.factories import colour_samples

    listener = NotifySocket.abstract()
    daemon = DaemonProcess(tmp_path / "data", make_base_model(tmp_path / "base.pt"), ["--meter-kind", "estimate"],
                           env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"})
    try:
        listener.wait_for("READY=1", 90)
        assert daemon.client.get("/healthz").status_code == 200  # READY=1 came once it serves
        assert "STATUS=idle, 0 samples buffered, model version 1" in listener.lines()
        samples = colour_samples(24, seed=1)
        body = encode_json_batch(samples.x.numpy(), samples.y.numpy(), context="cam-1")
        assert daemon.client.post("/v1/samples", json=body).status_code == 201
        listener.wait_for("STATUS=idle, 24 samples buffered", 30)
        pings = [t for t, message in listener.messages if message == "WATCHDOG=1"]
        assert len(pings) >= 4  # every 0.5 s
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.stderr()
        lines = listener.lines()
        assert lines.index("STOPPING=1") > lines.index("READY=1")
        assert lines[lines.index("STOPPING=1") + 1] == "STATUS=stopping"
        stderr = daemon.stderr()
        assert "<6>service.serve: received SIGTERM" in stderr and "<3>" not in stderr
    finally:
        daemon.close()
        listener.close()
