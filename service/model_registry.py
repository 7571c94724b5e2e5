"""Model versions on disk and the active model that ``/v1/predict`` uses.

Version files live in ``<data_dir>/models``; the store records them. Each version is a torch
checkpoint (``.pt``, what trainers start from) with a weights file beside it (``.npz``, what
``/predict`` serves through :mod:`device.numpy_model`), so this process never imports torch. A
checkpoint without its weights file (a configured base model, a data directory from before weights
files) is converted once by a short-lived child process that does import torch.

The active model is held in memory and swapped by replacing one reference, so a prediction in
flight finishes on the model it started with and the next one sees the new version — no lock on
the request path.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.config import ModelConfig
from device.files import atomic_write_bytes, remove_partial_files
from device.numpy_model import NumpyResNet26, WeightsError, load_weights, weights_path_for
from device.prediction import Prediction
from device.shipped import SHIPPED_BASE_MODEL, SHIPPED_BASE_WEIGHTS
from service.store import ModelVersion, Store

#: Seconds a conversion child may take: importing torch on a Raspberry Pi 3 takes tens of seconds.
CONVERSION_TIMEOUT_SECONDS = 300.0


class ModelFileError(RuntimeError):
    """A model file that cannot be served; the message names the file and the problem."""


@dataclass(frozen=True)
class LoadedModel:
    """A model version in memory."""

    version: int
    model: NumpyResNet26

    @property
    def config(self) -> ModelConfig:
        """The served model's configuration (input shape, classes, normalisation)."""
        return self.model.config


class ModelRegistry:
    """Keeps the store's model versions, their files and the in-memory active model in step."""

    def __init__(self, store: Store, models_dir: Path, base_model: Path | None = None) -> None:
        self.store = store
        self.models_dir = models_dir
        self.base_model = base_model or SHIPPED_BASE_MODEL
        self._active: LoadedModel | None = None
        self._swap_lock = threading.Lock()

    def bootstrap(self) -> LoadedModel:
        """Load the active version; on a fresh data directory, install the base model as version 1."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_files(self.models_dir)
        active = self.store.active_version()
        if active is None:
            versions = self.store.list_versions()
            if versions:
                active = self.store.activate(versions[-1].version)
            else:
                target = self.models_dir / "base.pt"
                # Weights first: converting validates the checkpoint, and a bad configured base
                # model must fail start-up clearly before anything is recorded.
                if Path(self.base_model).resolve() == SHIPPED_BASE_MODEL:
                    atomic_write_bytes(weights_path_for(target), SHIPPED_BASE_WEIGHTS.read_bytes())
                    atomic_write_bytes(target, Path(self.base_model).read_bytes())
                else:
                    # Stored self-describing: a bare state dict's architecture is read once, here.
                    convert_checkpoint(Path(self.base_model), weights_path_for(target), described=target)
                version = self.store.add_model_version(
                    target, notes=f"base model from {self.base_model}", activate=True
                )
                active = self.store.get_version(version)
        self._active = LoadedModel(active.version, self.load(active.path))
        return self._active

    def load(self, checkpoint: str | Path) -> NumpyResNet26:
        """The servable model of a version's checkpoint, converting it first if it has no weights file."""
        weights = weights_path_for(checkpoint)
        if not weights.exists():
            convert_checkpoint(Path(checkpoint), weights)
        try:
            return load_weights(weights)
        except WeightsError as exc:
            raise ModelFileError(str(exc)) from exc

    @property
    def active(self) -> LoadedModel:
        """The model ``/predict`` serves."""
        if self._active is None:
            raise RuntimeError("the model registry has not been bootstrapped")
        return self._active

    def candidate_path(self, job_id: int) -> Path:
        """Where a job's trainer writes its fine-tuned checkpoint (its weights file goes beside it)."""
        return self.models_dir / f"job-{job_id}.pt"

    def discard_candidate(self, job_id: int) -> None:
        """Remove what a job's trainer wrote, when it is not to become a version."""
        path = self.candidate_path(job_id)
        path.unlink(missing_ok=True)
        weights_path_for(path).unlink(missing_ok=True)

    def register(
        self,
        path: Path,
        *,
        parent_version: int,
        job_id: int,
        accuracy: dict[str, float],
        activate: bool,
        notes: str,
    ) -> int:
        """Record a trained model as a version; ``activate`` also makes it the one served."""
        model = self.load(path) if activate else None
        with self._swap_lock:
            version = self.store.add_model_version(
                path, parent_version=parent_version, job_id=job_id, accuracy=accuracy, notes=notes, activate=activate
            )
            if model is not None:
                self._active = LoadedModel(version, model)
        return version

    def activate(self, version: int) -> ModelVersion:
        """Serve ``version`` from now on (rollback or roll forward); the file is loaded first."""
        record = self.store.get_version(version)
        model = self.load(record.path)
        with self._swap_lock:
            record = self.store.activate(version)
            self._active = LoadedModel(version, model)
        return record

    def prune(self, keep: int) -> list[ModelVersion]:
        """Drop all but the newest ``keep`` versions (never the active one) and their files."""
        removed = self.store.prune_versions(keep)
        for record in removed:
            path = Path(record.path)
            if path.parent == self.models_dir:
                path.unlink(missing_ok=True)
                weights_path_for(path).unlink(missing_ok=True)
        return removed

    def predict(self, x: np.ndarray) -> tuple[int, Prediction]:
        """Classes and probabilities from the active model, with its version."""
        loaded = self.active
        return loaded.version, loaded.model.predict(x)


def convert_checkpoint(checkpoint: Path, weights: Path, described: Path | None = None) -> Path:
    """Write ``weights`` for ``checkpoint`` in a child process (see the module docstring), and with
    ``described`` the checkpoint as a tbftd checkpoint there."""
    command = [sys.executable, "-m", "device.weights_export", str(checkpoint), str(weights)]
    if described is not None:
        command.append(str(described))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CONVERSION_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise ModelFileError(f"{checkpoint}: converting it for serving took over {CONVERSION_TIMEOUT_SECONDS:.0f} s") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        raise ModelFileError(f"{checkpoint}: cannot be served: {reason}")
    return weights

