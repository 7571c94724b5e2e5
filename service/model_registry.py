"""Model versions on disk and the active model that ``/v1/predict`` uses.

Version files live in ``<data_dir>/models``; the store records them. The active model is held in
memory and swapped by replacing one reference, so a prediction in flight finishes on the model it
started with and the next one sees the new version — no lock on the request path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.checkpoint import atomic_write_bytes, load_checkpoint, remove_partial_files
from device.inference import Prediction, predict
from device.model import ModelConfig, ResNet26
from device.shipped import SHIPPED_BASE_MODEL
from service.store import ModelVersion, Store


@dataclass(frozen=True)
class LoadedModel:
    """A model version in memory."""

    version: int
    model: ResNet26

    @property
    def config(self) -> ModelConfig:
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
                # Validate before copying: a bad configured base model must fail start-up clearly.
                load_checkpoint(self.base_model)
                atomic_write_bytes(target, Path(self.base_model).read_bytes())
                version = self.store.add_model_version(
                    target, notes=f"base model from {self.base_model}", activate=True
                )
                active = self.store.get_version(version)
        self._active = LoadedModel(active.version, load_checkpoint(active.path).model)
        return self._active

    @property
    def active(self) -> LoadedModel:
        """The model ``/predict`` serves."""
        if self._active is None:
            raise RuntimeError("the model registry has not been bootstrapped")
        return self._active

    def candidate_path(self, job_id: int) -> Path:
        """Where a job's trainer writes its fine-tuned model."""
        return self.models_dir / f"job-{job_id}.pt"

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
        model = load_checkpoint(path).model if activate else None
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
        model = load_checkpoint(record.path).model
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
        return removed

    def predict(self, x: np.ndarray) -> tuple[int, Prediction]:
        """Classes and probabilities from the active model, with its version."""
        loaded = self.active
        return loaded.version, predict(loaded.model, x)

