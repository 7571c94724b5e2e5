"""Shared fixtures: small generated data so tests never need downloads or reference files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from device.model import ModelConfig, ResNet26
from device.samples import Samples
from energy.clock import ScaledClock
from energy.emulator import Emulator
from energy.profiles import ConstantProfile
from tests.energy_helpers import TIME_SCALE
from tests.factories import colour_samples


@pytest.fixture
def model() -> ResNet26:
    torch.manual_seed(0)
    return ResNet26(ModelConfig())


@pytest.fixture
def train_samples() -> Samples:
    return colour_samples(96, seed=1)


@pytest.fixture
def val_samples() -> Samples:
    return colour_samples(48, seed=2)


@pytest.fixture
def clock() -> ScaledClock:
    """A fresh accelerated clock (``TIME_SCALE`` emulated seconds per real one)."""
    return ScaledClock(TIME_SCALE)


@pytest.fixture
def um25c_meter() -> Iterator[Emulator]:
    """An emulated UM25C on a pseudo-terminal, drawing a constant 4.5 W."""
    emulator = Emulator(model="um25c", profile=ConstantProfile(4.5))
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
