"""The CPU-load estimator: published coefficients per board, board detection, overrides, labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from energy.estimator import GENERIC, PI3BPLUS, PI4B, PI5, CpuLoad, Estimator, detect_power_model

BOARDS = [
    # device-tree model (NUL-terminated, as the kernel writes it), board, watts at 0 / 50 / 100 %
    (b"Raspberry Pi 5 Model B Rev 1.0\x00", "pi5", (4.4032, 6.13215, 7.8611)),
    (b"Raspberry Pi 4 Model B Rev 1.4\x00", "pi4b", (2.2857, 4.5529, 6.8201)),
    (b"Raspberry Pi 3 Model B Plus Rev 1.3\x00", "pi3b+", (2.0022, 3.65135, 5.3005)),
    (b"Raspberry Pi Zero 2 W Rev 1.0\x00", "generic", (3.0, 5.0, 7.0)),
]


@pytest.mark.parametrize(("model_text", "board", "expected"), BOARDS)
def test_estimates_per_board_at_0_50_100_percent(
    tmp_path: Path, model_text: bytes, board: str, expected: tuple[float, float, float]
) -> None:
    model_file = tmp_path / "model"
    model_file.write_bytes(model_text)
    for load, watts in zip((0.0, 0.5, 1.0), expected, strict=True):
        estimator = Estimator(model_path=model_file, load_fraction=lambda load=load: load)
        sample = estimator.read()
        assert sample.watts == pytest.approx(watts, abs=1e-9)
        assert sample.source == f"estimate:{board}"
        assert sample.volts is None and sample.amps is None and sample.counter_milliwatt_hours is None


def test_no_device_tree_means_the_generic_guess(tmp_path: Path) -> None:
    assert detect_power_model(tmp_path / "missing") is GENERIC
    info = Estimator(model_path=tmp_path / "missing").describe()
    assert info.is_estimate and info.source == "estimate:generic"
    assert "rough guess" in info.detail


def test_known_models() -> None:
    assert (PI5.idle_watts, PI5.watts_per_load) == (4.4032, 3.4579)
    assert (PI4B.idle_watts, PI4B.watts_per_load) == (2.2857, 4.5344)
    assert (PI3BPLUS.idle_watts, PI3BPLUS.watts_per_load) == (2.0022, 3.2983)


def test_coefficients_can_be_overridden() -> None:
    estimator = Estimator(PI4B, idle_watts=2.7, load_fraction=lambda: 1.0)
    assert estimator.read().watts == pytest.approx(2.7 + 4.5344)
    assert estimator.read().source == "estimate:pi4b"
    assert "overridden" in estimator.describe().detail
    only_slope = Estimator(PI5, watts_per_load=5.0, load_fraction=lambda: 0.5)
    assert only_slope.read().watts == pytest.approx(4.4032 + 2.5)


def test_load_is_clamped() -> None:
    assert Estimator(PI5, load_fraction=lambda: 1.7).read().watts == pytest.approx(7.8611)
    assert Estimator(PI5, load_fraction=lambda: -0.2).read().watts == pytest.approx(4.4032)


def test_real_cpu_load_is_a_fraction() -> None:
    load = CpuLoad()
    for _ in range(3):
        assert 0.0 <= load() <= 1.0
    estimator = Estimator(PI5)
    with estimator:
        assert PI5.idle_watts <= estimator.read().watts <= PI5.idle_watts + PI5.watts_per_load
