"""Model versions on disk and the model each context is served, per context.

Every context has its own model history: its jobs train from its active version and their
candidates become its versions, so one camera's drift never changes another's model. Contexts
named together in ``model_groups`` share one history (their *scope* is the group); every other
context is its own scope. A scope without a version of its own serves the default model: the
base model, or in a data directory from before per-context models the version that was active.

Files live in ``<data_dir>/models``; the store records them. The base is a torch checkpoint
(``.pt``, what trainers start from) with a weights file beside it (``.npz``, what ``/predict``
serves through :mod:`device.numpy_model`), so this process never imports torch. A trained version
is a delta file (:mod:`device.weights_delta`): only the arrays that differ from the base. In
memory a version's model shares the base's unchanged arrays, so a context costs about its delta.
A checkpoint without its weights file (a configured base model) is converted once by a
short-lived child process that does import torch.

Served models are swapped by replacing one reference, so a prediction in flight finishes on the
model it started with and the next one sees the new version: no lock on the request path. Only
the versions some scope serves are held in memory.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.config import ModelConfig
from device.files import atomic_write_bytes, remove_partial_files
from device.numpy_model import NumpyResNet26, WeightsError, read_weights, weights_path_for
from device.prediction import Prediction
from device.shipped import SHIPPED_BASE_MODEL, SHIPPED_BASE_WEIGHTS
from device.weights_delta import DELTA_SUFFIX, is_delta_path, load_delta
from service.store import ModelVersion, Store

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class TrainingFiles:
    """What a trainer loads for a version: the full checkpoint, the delta on it (None for a full
    version) and the base the candidate's delta is taken against."""

    checkpoint: Path
    delta: Path | None
    base: Path


class ModelRegistry:
    """Keeps the store's model versions, their files and the models in memory in step.

    ``model_groups`` maps a context to the group whose model it shares (see the module docstring).
    """

    def __init__(self, store: Store, models_dir: Path, base_model: Path | None = None,
                 model_groups: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.models_dir = models_dir
        self.base_model = base_model or SHIPPED_BASE_MODEL
        self.model_groups = dict(model_groups or {})
        self._base: LoadedModel | None = None
        self._base_path = Path()
        self._base_state: dict[str, np.ndarray] = {}
        self._default = 0
        self._scopes: dict[str, int] = {}
        self._loaded: dict[int, LoadedModel] = {}
        self._swap_lock = threading.Lock()

    def scope_of(self, context: str) -> str:
        """The scope whose model ``context`` is served and adapts: its group, or itself."""
        return self.model_groups.get(context, context)

    # -- start-up ---------------------------------------------------------------------------------

    def bootstrap(self) -> LoadedModel:
        """Install the base model on a fresh data directory (as version 1, the default), load the
        base and the default, and remove files no version records; returns the default model."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_files(self.models_dir)
        base = self.store.base_version()
        if base is None:
            base = self.store.get_version(self._install_base(activate=self.store.active_version() is None))
        default = self.store.active_version()
        if default is None:
            default = self.store.activate(base.version)
        self._base_path = Path(base.path)
        # One read of the base's weights: the served model, and the state every delta applies to.
        model, self._base_state = self._read_full(base.path)
        self._base = LoadedModel(base.version, model)
        self._loaded = {base.version: self._base}
        self._default = default.version
        self._scopes = self.store.scope_versions()
        self._model(default.version)
        self._sweep_orphans()
        return self._loaded[default.version]

    def _install_base(self, *, activate: bool) -> int:
        target = self.models_dir / "base.pt"
        # Weights first: converting validates the checkpoint, and a bad configured base model
        # must fail start-up clearly before anything is recorded.
        if Path(self.base_model).resolve() == SHIPPED_BASE_MODEL:
            atomic_write_bytes(weights_path_for(target), SHIPPED_BASE_WEIGHTS.read_bytes())
            atomic_write_bytes(target, Path(self.base_model).read_bytes())
        else:
            # Stored self-describing: a bare state dict's architecture is read once, here.
            convert_checkpoint(Path(self.base_model), weights_path_for(target), described=target)
        return self.store.add_model_version(target, notes=f"base model from {self.base_model}", activate=activate)

    def _sweep_orphans(self) -> None:
        """Remove version files no version records: a crash after a prune's commit and before its
        files were deleted leaves them behind (never the other way round)."""
        recorded = {Path(p).name for p in self.store.version_paths()}
        recorded |= {weights_path_for(p).name for p in recorded if not is_delta_path(p)}
        for path in self.models_dir.iterdir():
            if path.name.startswith("job-") and path.name not in recorded:  # base.* is never swept
                log.info("removing %s: no model version records it", path)
                path.unlink(missing_ok=True)

    # -- loading ----------------------------------------------------------------------------------

    def load(self, checkpoint: str | Path) -> NumpyResNet26:
        """The servable model of a version's file: a delta on the base, or a full checkpoint
        (converted first if it has no weights file)."""
        if is_delta_path(checkpoint):
            try:
                return load_delta(checkpoint).model(self.base.model, self._base_state)
            except WeightsError as exc:
                raise ModelFileError(str(exc)) from exc
        return self._read_full(checkpoint)[0]

    def _read_full(self, checkpoint: str | Path) -> tuple[NumpyResNet26, dict[str, np.ndarray]]:
        """A full version's servable model and its state dict (converted first if it has no weights file)."""
        weights = weights_path_for(checkpoint)
        if not weights.exists():
            convert_checkpoint(Path(checkpoint), weights)
        try:
            config, state = read_weights(weights)
            return NumpyResNet26(config, state), state
        except WeightsError as exc:
            raise ModelFileError(str(exc)) from exc

    def _model(self, version: int) -> LoadedModel:
        loaded = self._loaded.get(version)
        if loaded is None:
            with self._swap_lock:
                loaded = self._loaded.get(version)
                if loaded is None:
                    loaded = LoadedModel(version, self.load(self.store.get_version(version).path))
                    self._loaded = {**self._loaded, version: loaded}
        return loaded

    def _drop_unserved(self) -> None:
        # Under _swap_lock. Bounded memory: only the versions some scope serves stay loaded.
        served = {self._default, *self._scopes.values()}
        assert self._base is not None
        served.add(self._base.version)
        self._loaded = {v: m for v, m in self._loaded.items() if v in served}

    # -- what is served ---------------------------------------------------------------------------

    @property
    def base(self) -> LoadedModel:
        """The base model every delta applies to."""
        if self._base is None:
            raise RuntimeError("the model registry has not been bootstrapped")
        return self._base

    @property
    def config(self) -> ModelConfig:
        """The configuration every version shares (the base's: deltas cannot change it)."""
        return self.base.config

    @property
    def default_version(self) -> int:
        """The version scopes without a model of their own serve."""
        return self._default

    def version_for(self, context: str) -> int:
        """The version ``context`` is served."""
        return self._scopes.get(self.scope_of(context), self._default)

    def model_for(self, context: str) -> LoadedModel:
        """The model ``context`` is served (and its next job starts from)."""
        return self._model(self.version_for(context))

    def scope_versions(self) -> dict[str, int]:
        """The version of every scope with a model of its own."""
        return dict(self._scopes)

    def predict(self, context: str, x: np.ndarray) -> tuple[int, Prediction]:
        """Classes and probabilities from ``context``'s model, with its version."""
        loaded = self.model_for(context)
        return loaded.version, loaded.model.predict(x)

    def training_files(self, version: int) -> TrainingFiles:
        """The files a trainer starts ``version`` from."""
        record = self.store.get_version(version)
        if is_delta_path(record.path):
            return TrainingFiles(self._base_path, Path(record.path), self._base_path)
        return TrainingFiles(Path(record.path), None, self._base_path)

    # -- changes ----------------------------------------------------------------------------------

    def candidate_path(self, job_id: int) -> Path:
        """Where a job's trainer writes its candidate: a delta file on the base."""
        return self.models_dir / f"job-{job_id}{DELTA_SUFFIX}"

    def discard_candidate(self, job_id: int) -> None:
        """Remove what a job's trainer wrote, when it is not to become a version."""
        self.candidate_path(job_id).unlink(missing_ok=True)

    def register(
        self,
        path: Path,
        *,
        context: str,
        parent_version: int,
        job_id: int,
        accuracy: dict[str, float],
        activate: bool,
        notes: str,
    ) -> int:
        """Record a trained candidate as a version of ``context``'s scope; ``activate`` also makes
        it the one that scope is served."""
        scope = self.scope_of(context)
        model = self.load(path) if activate else None
        with self._swap_lock:
            version = self.store.add_model_version(
                path, scope=scope, delta_of=self.base.version if is_delta_path(path) else None,
                parent_version=parent_version, job_id=job_id, accuracy=accuracy, notes=notes, activate=activate,
            )
            if model is not None:
                self._loaded = {**self._loaded, version: LoadedModel(version, model)}
                self._scopes = {**self._scopes, scope: version}
                self._drop_unserved()
        return version

    def activate(self, version: int, context: str) -> ModelVersion:
        """Serve ``version`` to ``context``'s scope from now on (rollback or roll forward); the
        file is loaded first."""
        scope = self.scope_of(context)
        record = self.store.get_version(version)
        model = self._loaded.get(version) or LoadedModel(version, self.load(record.path))
        with self._swap_lock:
            record = self.store.activate(version, scope)
            self._loaded = {**self._loaded, version: model}
            self._scopes = {**self._scopes, scope: version}
            self._drop_unserved()
        return record

    def prune(self, context: str, keep: int) -> list[ModelVersion]:
        """Drop all but the newest ``keep`` versions of ``context``'s scope (never the base, the
        default, nor any scope's active version). Files are deleted only after the store's commit
        that forgot them is on stable storage: a crash between leaves files that the next start
        sweeps, never a version without its file."""
        removed = self.store.prune_versions(keep, self.scope_of(context))
        for record in removed:
            path = Path(record.path)
            if path.parent == self.models_dir:
                path.unlink(missing_ok=True)
                if not is_delta_path(path):
                    weights_path_for(path).unlink(missing_ok=True)
        return removed


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

