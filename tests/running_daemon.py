"""A real ``tbftd serve`` process for end-to-end tests (the ``um25c_meter`` fixture in conftest
plays its meter)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from energy.emulator import Emulator
from energy.profiles import ConstantProfile


def free_port() -> int:
    """A TCP port free on the loopback interface just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tbftd_command() -> list[str]:
    """The command that runs the CLI of this checkout with this interpreter."""
    return [sys.executable, "-m", "service.cli"]


class Daemon:
    """A running ``tbftd serve`` process and an HTTP client for it."""

    def __init__(self, data_dir: Path, meter_port: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = data_dir.parent / "daemon.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TBFTD_")}
        self.process = subprocess.Popen(
            [*tbftd_command(), "serve", "--port", str(self.port), "--data-dir", str(data_dir),
             "--meter-port", meter_port, "--meter-kind", "um25c", "--baseline-seconds", "1", *extra],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr_path.open("wb"),
            env=env,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30.0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited: {self.stderr_path.read_text()[-2000:]}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("daemon did not become ready in 60 s")

    def stop(self) -> int:
        self.client.close()
        self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@contextmanager
def metered_daemon(data_dir: Path, watts: float, *extra: str) -> Iterator[Daemon]:
    """A daemon metered by an emulated UM25C that draws ``watts``; on exit both stop, and the
    daemon must have exited cleanly."""
    meter = Emulator(model="um25c", profile=ConstantProfile(watts))
    meter.start()
    try:
        running = Daemon(data_dir, meter.port, *extra)
    except BaseException:
        meter.stop()
        raise
    try:
        yield running
    finally:
        status = running.stop()
        meter.stop()
        assert status == 0, running.stderr_path.read_text()[-2000:]
