"""The process environment the CLI sets up before any command runs (and trainers inherit)."""

from __future__ import annotations

import os

import pytest

from service.cli import main


@pytest.mark.parametrize(("variable", "value"), [("OMP_WAIT_POLICY", "PASSIVE"), ("OPENBLAS_NUM_THREADS", "1")])
def test_commands_keep_waiting_threads_from_spinning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    monkeypatch.delenv(variable, raising=False)
    assert main(["config", "example"]) == 0
    assert os.environ[variable] == value


def test_an_operators_own_choice_is_kept(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert main(["config", "example"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and os.environ["OPENBLAS_NUM_THREADS"] == "2"
