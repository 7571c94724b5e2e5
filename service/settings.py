"""The daemon's settings: one table, four sources.

The table is the body of :class:`Settings`: each field is a setting, its annotation the type, and
:func:`setting` gives its default and help text. :data:`SETTINGS` is the same table as
:class:`Setting` rows, for code that walks it (the argparse options, the README table, the example
config). Values come from, lowest precedence first:

1. the defaults below;
2. a TOML config file (``--config``, ``$TBFTD_CONFIG``; systemd passes ``/etc/tbftd/tbftd.toml``);
3. ``TBFTD_<NAME>`` environment variables (``TBFTD_PORT=8471``);
4. overrides, which ``tbftd serve`` takes from its command-line flags (``--port 8471``).

Every value is parsed and checked; a :class:`SettingsError` names the setting and where the bad
value came from (``TBFTD_PORT: expected an integer, got 'abc'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import textwrap
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, UnionType
from typing import Any, Literal, TypeVar

from drift.types import BlockMapping

T = TypeVar("T")

ENV_PREFIX = "TBFTD_"
#: Names the config file path; read only when ``load_settings`` is given no ``config_path``.
CONFIG_ENV_VAR = "TBFTD_CONFIG"
#: The path the systemd unit passes with ``--config``.
SYSTEM_CONFIG_PATH = Path("/etc/tbftd/tbftd.toml")
#: The data directory when neither a source nor ``$STATE_DIRECTORY`` names one.
DEFAULT_DATA_DIR = Path("tbftd-data")

# The same values as ``energy.discovery.KINDS`` plus ``auto``, and ``device.finetune.BN_MODES``
# (tests check they agree). Literals here so reading settings imports neither pyserial nor torch.
MeterKind = Literal["auto", "um", "um24c", "um25c", "um34c", "line", "estimate"]
BNMode = Literal["adapt", "frozen", "train"]
#: ``device.profiles.PROFILES`` (tests check they agree).
FinetuneProfile = Literal["tbftd", "paper"]
BlockName = Literal["block1", "block2", "block3", "fc", "full", "bn"]
LogLevel = Literal["debug", "info", "warning", "error"]

_MEBIBYTE = 1024 * 1024
_SIZE_SUFFIXES: dict[str, int] = {
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": _MEBIBYTE,
    "mb": 1000**2,
    "mib": _MEBIBYTE,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the setting and the source."""


def setting(
    default: T,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    size: bool = False,
    secret: bool = False,
    example: Any = None,
) -> T:
    """Declare one setting in :class:`Settings`: its default and help, plus checks.

    ``minimum``/``maximum`` bound numbers (inclusive); ``size`` lets a byte count be written as
    ``"16MiB"``; ``secret`` hides the value when settings are shown; ``example`` is the value the
    example config shows for a setting whose default is None.
    """
    metadata = {
        "help": help,
        "minimum": minimum,
        "maximum": maximum,
        "size": size,
        "secret": secret,
        "example": example,
    }
    # dataclasses accept a Field where a default goes; typed as T so the class body type-checks.
    return typing.cast(T, field(default=default, metadata=metadata))


@dataclass(frozen=True)
class Settings:
    """Everything the daemon can be told. Build with :func:`load_settings`; ``Settings()`` holds
    the defaults (except the ``$STATE_DIRECTORY`` rule for ``data_dir``)."""

    # --- HTTP -------------------------------------------------------------------------------------
    host: str = setting(
        "127.0.0.1",
        "Address to listen on. Any address other than loopback (127.0.0.0/8, ::1, localhost) "
        "requires `api_token`.",
    )
    port: int = setting(8470, "TCP port to listen on.", minimum=1, maximum=65535)
    api_token: str | None = setting(
        None,
        "Bearer token that guards every endpoint except /healthz. Required when `host` is not a "
        "loopback address; prefer the environment variable or a root-only config file to a flag.",
        secret=True,
        example="change-me",
    )
    max_body_bytes: int = setting(
        16 * _MEBIBYTE,
        "Largest request body accepted, counted while streaming (413 above it). Accepts a suffix: "
        "16MiB, 512KiB.",
        minimum=1024,
        size=True,
    )
    max_batch_samples: int = setting(
        1024, "Most samples one POST /v1/samples may carry.", minimum=1
    )
    graceful_timeout_seconds: float = setting(
        10.0,
        "Seconds uvicorn waits for open connections on shutdown before closing them.",
        minimum=0,
    )
    log_level: LogLevel = setting("info", "Least severe log level written to stderr.")

    # --- Storage ----------------------------------------------------------------------------------
    data_dir: Path = setting(
        DEFAULT_DATA_DIR,
        "Directory holding the SQLite database and the model versions. Default: "
        "`$STATE_DIRECTORY` when set (systemd's StateDirectory=), else ./tbftd-data.",
        example="/var/lib/tbftd",
    )
    base_model: Path | None = setting(
        None,
        "Checkpoint the first model version is made from. Default: the base model shipped in the "
        "package.",
        example="/var/lib/tbftd/base.pt",
    )
    max_buffer_samples: int = setting(
        20_000,
        "Capacity of the sample buffer, in samples. When full, samples a job has trained on go "
        "first, then the oldest of the context holding the most (never a context with a pending "
        "job); if that is not enough the batch is refused (507).",
        minimum=1,
    )
    max_buffer_bytes: int = setting(
        256 * _MEBIBYTE,
        "Capacity of the sample buffer, in payload bytes (same eviction rule). Accepts a suffix.",
        minimum=1024,
        size=True,
    )
    max_context_samples: int | None = setting(
        5_000,
        "Most samples one context keeps: over it, its samples a job has trained on go first, then "
        "its oldest (507 while a pending job holds them). Empty: no quota.",
        minimum=1,
    )
    max_device_samples: int | None = setting(
        2_500,
        "Most samples one device (`device_id`) keeps across contexts: over it, its samples a job "
        "has trained on go first; if none have been, the batch gets 429 until a job uses them. "
        "Empty: no quota.",
        minimum=1,
    )
    keep_versions: int = setting(
        5,
        "Model versions kept per context; older ones are pruned. Never pruned: the base model, the "
        "default model and any context's active version.",
        minimum=1,
    )
    model_groups: str | None = setting(
        None,
        "Contexts that share one model, as `group=context,context;group=context,...`: their jobs "
        "adapt and their predictions use the group's model. Every other context has a model of "
        "its own.",
        example="lobby=cam-1,cam-2",
    )
    hint_expiry_seconds: float = setting(
        86_400.0,
        "A drift hint still waiting for samples this long after it was posted expires (its "
        "state says so) and starts no job.",
        minimum=1,
    )
    idempotency_key_seconds: float = setting(
        86_400.0,
        "How long a POST's `Idempotency-Key` is remembered: a retry within it gets the first "
        "answer and stores nothing again.",
        minimum=1,
    )

    # --- Jobs -------------------------------------------------------------------------------------
    min_samples: int = setting(
        200,
        "Labelled samples a context must hold before a drift hint starts a job (a hint may ask "
        "for more or fewer).",
        minimum=1,
    )
    block_for_input: BlockName = setting("block1", "Block fine-tuned for input-level drift.")
    block_for_feature: BlockName = setting("block3", "Block fine-tuned for feature-level drift.")
    block_for_output: BlockName = setting("fc", "Block fine-tuned for output-level drift.")
    finetune_profile: FinetuneProfile = setting(
        "tbftd",
        "Fine-tuning settings of a job's block: `tbftd`, short jobs in batches of 16 measured on "
        "real CIFAR-10 and Shapes-40 (README, *Fine-tuning profiles*), or `paper`, the paper's "
        "10 epochs of 128 with early stopping. A job may ask for either; `full` is the paper's in both.",
    )
    epochs: int | None = setting(
        None,
        "Most training epochs per job (early stopping may end it sooner). Default: the profile's "
        "(`tbftd`: 3 for blocks, 10 for `fc` and `full`; `paper`: 10).",
        minimum=1,
        example=10,
    )
    batch_size: int | None = setting(
        None,
        "Training batch size (the optimizer's step). Default: the profile's (`tbftd`: 16; "
        "`paper` and `full`: 128).",
        minimum=1,
        example=128,
    )
    micro_batch_size: int = setting(
        16,
        "Samples per forward/backward pass; gradients of a batch's passes are accumulated, so "
        "peak training memory follows this, not `batch_size` (BatchNorm in train mode sees the "
        "smaller batches).",
        minimum=1,
    )
    cache_budget_bytes: int = setting(
        128 * _MEBIBYTE,
        "Memory a job may spend on cached activations of the frozen layers in front of its "
        "block; above it they are recomputed. Accepts a suffix: 128MiB.",
        minimum=0,
        size=True,
    )
    bn_mode: BNMode | None = setting(
        None,
        "BatchNorm statistics of frozen layers for every job: `adapt` re-estimates them on the "
        "job's samples, `frozen` keeps the source statistics, `train` re-estimates them and then "
        "trains every layer in train mode, as the paper's loop does. Default: each block's profile "
        "(`adapt`, and `train` for block1 and block2 under `tbftd`).",
        example="adapt",
    )
    val_fraction: float = setting(
        0.2,
        "Fraction of a job's samples held out (stratified, seeded) to compare the new model with "
        "the active one.",
        minimum=0.01,
        maximum=0.9,
    )
    promote_margin: float = setting(
        0.0,
        "A new model is promoted if its validation accuracy is at least the active model's minus "
        "this margin (a fraction, 0.01 = one point).",
        minimum=0,
        maximum=1,
    )
    seed: int = setting(0, "Seed of the train/validation split and of training.", minimum=0)
    requeue_interrupted: bool = setting(
        True, "Re-queue jobs found `running` at start-up (left by a crash) after marking them "
        "interrupted.",
    )
    trainer_threads: int | None = setting(
        None,
        "Torch threads of the trainer process. Default: the cores found idle over half a second "
        "before each job, at most the cores minus one (a core stays with the API), at least one: "
        "threads beyond the free cores made a training step 3-5 times slower.",
        minimum=1,
        example=3,
    )
    trainer_nice: int = setting(
        10, "Niceness the trainer process adds to itself (0 to 19).", minimum=0, maximum=19
    )
    trainer_grace_seconds: float = setting(
        10.0,
        "Seconds a cancelled or stopping trainer gets to stop cooperatively before it is "
        "terminated, then killed.",
        minimum=0,
    )

    # --- Drift detection and energy budgets -------------------------------------------------------
    auto_detect: bool = setting(
        False,
        "Treat every context as `auto` when its devices send no hint: once it holds `min_samples` "
        "samples that no job has used, detect the drift type from them and adapt (a detected "
        "`none` trains nothing).",
    )
    auto_tolerance: float = setting(
        0.02,
        "An `auto` job stops escalating (`bn` → `block1`) once validation accuracy is within this "
        "of the model's source accuracy (a fraction, 0.02 = two points).",
        minimum=0,
        maximum=1,
    )
    energy_budget_job_joules: float | None = setting(
        None,
        "Joules an `auto` job may spend: no further strategy starts beyond it, and training stops "
        "at the end of the epoch that crosses it, keeping the best weights. Default: no limit.",
        minimum=0,
        example=500.0,
    )
    energy_budget_day_joules: float | None = setting(
        None,
        "Joules all jobs together may spend in any 24 hours: a job due when they are spent is not "
        "started (it is cancelled, saying why), and an `auto` job's budget is at most what "
        "remains. Default: no limit.",
        minimum=0,
        example=5000.0,
    )

    # --- Energy -----------------------------------------------------------------------------------
    meter_port: str | None = setting(
        None,
        "Serial port of the USB power meter (/dev/ttyUSB0, /dev/rfcomm0). Default: probe the usual "
        "ports, else use the estimator.",
        example="/dev/ttyUSB0",
    )
    meter_kind: MeterKind = setting(
        "auto",
        "Meter kind: `auto` probes; `um` or a model (`um24c`, `um25c`, `um34c`) for RDTech "
        "meters; `line` for a meter that prints text lines; `estimate` for the CPU-load "
        "estimator.",
    )
    meter_baud: int | None = setting(
        None, "Meter baud rate. Default: 9600 for UM meters, 115200 for line meters.", minimum=1,
        example=9600,
    )
    meter_line_columns: str | None = setting(
        None,
        "Columns of a line meter, e.g. `volts,amps` or `millivolts,milliamps,watts`.",
        example="volts,amps",
    )
    meter_line_separator: str = setting(",", "Field separator of a line meter.")
    meter_line_keys: str | None = setting(
        None,
        "Keys of a line meter's `key=value` fields, one per column, e.g. `V,I`.",
        example="V,I",
    )
    baseline_seconds: float = setting(
        3.0,
        "Seconds of idle power measured before each job; net joules are the energy above it "
        "(0: no baseline).",
        minimum=0,
    )

    # Where each value came from ("default", the config path, TBFTD_PORT, --port) and warnings
    # found while loading (unknown TBFTD_* variables). Not settings: no metadata, not in the table.
    sources: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )
    warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        # Checked here, not only in load_settings, so Settings(...) and dataclasses.replace()
        # cannot make settings that load_settings would refuse.
        for s in SETTINGS:
            value = getattr(self, s.name)
            checked = s.coerce(value, self.sources.get(s.name, s.name))
            if checked is not value:
                object.__setattr__(self, s.name, checked)
        _check_together(self)

    @property
    def database_path(self) -> Path:
        """The SQLite database inside ``data_dir``."""
        return self.data_dir / "tbftd.sqlite3"

    @property
    def models_dir(self) -> Path:
        """The directory of model versions inside ``data_dir``."""
        return self.data_dir / "models"

    def context_groups(self) -> dict[str, str]:
        """``model_groups`` as a mapping from each grouped context to its group."""
        return parse_model_groups(self.model_groups or "", "model_groups")

    def block_mapping(self) -> BlockMapping:
        """The drift type → block rule these settings give."""
        return BlockMapping(
            input=self.block_for_input, feature=self.block_for_feature, output=self.block_for_output
        )

    def redacted(self) -> dict[str, Any]:
        """Every setting as JSON-ready values, secrets replaced by ``"***"`` (for logs, status)."""
        shown: dict[str, Any] = {}
        for s in SETTINGS:
            value = getattr(self, s.name)
            if s.secret and value is not None:
                value = "***"
            shown[s.name] = str(value) if isinstance(value, Path) else value
        return shown


@dataclass(frozen=True)
class Setting:
    """One row of the settings table.

    ``type`` is one of ``int``, ``float``, ``bool``, ``str``, ``path``, ``size`` (a byte count that
    may carry a suffix) or ``choice`` (one of ``choices``); ``optional`` settings may be None,
    which a source expresses by leaving the setting out (or an empty environment variable).
    """

    name: str
    type: str
    default: Any
    help: str
    optional: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False
    example: Any = None

    @property
    def env_var(self) -> str:
        """The environment variable that sets it: ``TBFTD_PORT``."""
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        """The command-line option that sets it: ``--data-dir``."""
        return "--" + self.name.replace("_", "-")

    def parse_text(self, text: str, source: str) -> Any:
        """The value written as ``text`` (an environment variable, a flag), checked."""
        if self.optional and text.strip() == "":
            return None
        if self.type == "int":
            value: Any = _parse_int(text, source)
        elif self.type == "size":
            value = _parse_size(text, source)
        elif self.type == "float":
            value = _parse_float(text, source)
        elif self.type == "bool":
            word = text.strip().lower()
            if word in _TRUE_WORDS:
                value = True
            elif word in _FALSE_WORDS:
                value = False
            else:
                raise SettingsError(f"{source}: expected a boolean (true/false), got {text!r}")
        elif self.type == "path":
            value = Path(text).expanduser()
        elif self.type == "choice":
            value = text.strip().lower()
        else:
            value = text
        return self.check(value, source)

    def coerce(self, value: Any, source: str) -> Any:
        """``value`` from a typed source (TOML, a caller's overrides), checked.

        Strings are parsed as :meth:`parse_text` does, so overrides may be raw flag text.
        """
        if value is None:
            if self.optional:
                return None
            raise SettingsError(f"{source}: {self.name} cannot be empty")
        if isinstance(value, str) and self.type != "str":
            return self.parse_text(value, source)
        if self.type in ("int", "size"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise SettingsError(f"{source}: expected an integer, got {value!r}")
        elif self.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingsError(f"{source}: expected a number, got {value!r}")
            value = float(value)
        elif self.type == "bool":
            if not isinstance(value, bool):
                raise SettingsError(f"{source}: expected a boolean (true/false), got {value!r}")
        elif self.type == "path":
            if not isinstance(value, os.PathLike):
                raise SettingsError(f"{source}: expected a path, got {value!r}")
            value = Path(value).expanduser()
        elif not isinstance(value, str):
            raise SettingsError(f"{source}: expected a string, got {value!r}")
        return self.check(value, source)

    def check(self, value: Any, source: str) -> Any:
        """``value`` unchanged if it is within the setting's choices and bounds."""
        if value is None:
            return None
        if self.choices and value not in self.choices:
            raise SettingsError(
                f"{source}: expected one of {', '.join(self.choices)}, got {value!r}"
            )
        if self.minimum is not None and value < self.minimum:
            raise SettingsError(f"{source}: must be at least {self.minimum:g}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise SettingsError(f"{source}: must be at most {self.maximum:g}, got {value!r}")
        return value

    def describe_default(self) -> str:
        """The default as the README and ``--help`` show it."""
        if self.name == "data_dir":
            return "`$STATE_DIRECTORY`, else ./tbftd-data"
        if self.default is None:
            return "unset"
        if self.type == "bool":
            return "true" if self.default else "false"
        if self.type == "size" and self.default % _MEBIBYTE == 0:
            return f"{self.default // _MEBIBYTE} MiB"
        return str(self.default)


def _parse_int(text: str, source: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise SettingsError(f"{source}: expected an integer, got {text!r}") from None


def _parse_float(text: str, source: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise SettingsError(f"{source}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise SettingsError(f"{source}: expected a finite number, got {text!r}")
    return value


def _parse_size(text: str, source: str) -> int:
    stripped = text.strip().lower().replace(" ", "")
    digits = stripped.rstrip("abcdefghijklmnopqrstuvwxyz")
    suffix = stripped[len(digits) :]
    if suffix and suffix not in _SIZE_SUFFIXES:
        raise SettingsError(
            f"{source}: expected a byte count such as 16777216 or 16MiB, got {text!r}"
        )
    try:
        number = float(digits) if "." in digits else int(digits)
    except ValueError:
        raise SettingsError(
            f"{source}: expected a byte count such as 16777216 or 16MiB, got {text!r}"
        ) from None
    return int(number * _SIZE_SUFFIXES.get(suffix, 1))


def _setting_from_field(f: dataclasses.Field[Any], annotation: Any) -> Setting:
    """A table row from one field of :class:`Settings`."""
    optional = False
    if isinstance(annotation, UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        (annotation,) = members
    choices: tuple[str, ...] = ()
    if typing.get_origin(annotation) is Literal:
        choices = tuple(typing.get_args(annotation))
        kind = "choice"
    elif annotation is Path:
        kind = "path"
    elif annotation in (bool, int, float, str):
        kind = "size" if f.metadata["size"] else annotation.__name__
    else:  # a new field with a type this module cannot parse: fail at import, not at start-up
        raise TypeError(f"setting {f.name}: unsupported type {annotation!r}")
    return Setting(
        name=f.name,
        type=kind,
        default=f.default,
        help=f.metadata["help"],
        optional=optional,
        choices=choices,
        minimum=f.metadata["minimum"],
        maximum=f.metadata["maximum"],
        secret=f.metadata["secret"],
        example=f.metadata["example"],
    )


def _build_table() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(Settings)
    return tuple(
        _setting_from_field(f, hints[f.name]) for f in dataclasses.fields(Settings) if f.metadata
    )


#: The settings table, in declaration order.
SETTINGS: tuple[Setting, ...] = _build_table()
SETTINGS_BY_NAME: Mapping[str, Setting] = MappingProxyType({s.name: s for s in SETTINGS})


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """The settings from defaults < the TOML file < ``TBFTD_*`` variables < ``overrides``.

    ``config_path`` None means ``$TBFTD_CONFIG`` if set, else no file (the systemd unit passes
    ``/etc/tbftd/tbftd.toml`` explicitly). ``env`` defaults to ``os.environ``. ``overrides`` maps
    setting names to values (typed, or text as on the command line); None values are ignored, so
    unset argparse options can be passed straight through. Raises :class:`SettingsError`.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
    sources: dict[str, str] = {s.name: "default" for s in SETTINGS}
    warnings: list[str] = []

    state_directory = env.get("STATE_DIRECTORY", "")
    if state_directory:
        # systemd joins several StateDirectory= entries with colons; the first is ours.
        values["data_dir"] = Path(state_directory.split(":")[0])
        sources["data_dir"] = "STATE_DIRECTORY"

    if config_path is None and env.get(CONFIG_ENV_VAR):
        config_path = env[CONFIG_ENV_VAR]
    if config_path is not None:
        for name, (value, source) in read_config_file(config_path).items():
            values[name] = value
            sources[name] = source

    known_env = {s.env_var for s in SETTINGS} | {CONFIG_ENV_VAR}
    for s in SETTINGS:
        if s.env_var in env:
            values[s.name] = s.parse_text(env[s.env_var], s.env_var)
            sources[s.name] = s.env_var
    for key in sorted(env):
        if key.startswith(ENV_PREFIX) and key not in known_env:
            # Not an error: other tools may share the prefix. The daemon logs these at start-up.
            warnings.append(f"{key}: not a setting{_suggestion(key[len(ENV_PREFIX):].lower())}")

    for name, value in (overrides or {}).items():
        if value is None:
            continue
        s = SETTINGS_BY_NAME.get(name)
        if s is None:
            raise SettingsError(f"unknown setting {name!r}{_suggestion(name)}")
        values[name] = s.coerce(value, s.flag)
        sources[name] = s.flag

    return Settings(**values, sources=MappingProxyType(sources), warnings=tuple(warnings))


def read_config_file(path: str | os.PathLike[str]) -> dict[str, tuple[Any, str]]:
    """The settings a TOML config file sets, as ``name -> (value, source)``; checked.

    Keys are setting names at the top level (``port = 8471``). An unknown key, a missing file or
    bad TOML is a :class:`SettingsError` naming the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"{path}: config file not found") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    found: dict[str, tuple[Any, str]] = {}
    for key, value in data.items():
        s = SETTINGS_BY_NAME.get(key)
        if s is None:
            raise SettingsError(f"{path}: unknown setting {key!r}{_suggestion(key)}")
        source = f"{path}: {key}"
        found[key] = (s.coerce(value, source), source)
    return found


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def _check_together(settings: Settings) -> None:
    """Rules that involve more than one setting."""

    def origin(name: str) -> str:
        source = settings.sources.get(name)
        return f" from {source}" if source else ""

    if not is_loopback(settings.host) and not settings.api_token:
        raise SettingsError(
            f"api_token: required when host is not a loopback address (host "
            f"{settings.host!r}{origin('host')}); set {SETTINGS_BY_NAME['api_token'].env_var}"
        )
    if settings.model_groups:
        parse_model_groups(settings.model_groups, f"model_groups{origin('model_groups')}")
    if settings.meter_line_keys and not settings.meter_line_columns:
        raise SettingsError(f"meter_line_keys: needs meter_line_columns{origin('meter_line_keys')}")


_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def parse_model_groups(text: str, source: str) -> dict[str, str]:
    """``group=context,context;group=...`` as ``{context: group}``; SettingsError names what is wrong."""
    groups: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        group, sep, members = part.partition("=")
        contexts = [c.strip() for c in members.split(",") if c.strip()]
        if not sep or not _NAME.fullmatch(group.strip()) or not contexts:
            raise SettingsError(f"{source}: expected group=context,context;... got {part!r}")
        for context in contexts:
            if not _NAME.fullmatch(context):
                raise SettingsError(f"{source}: {context!r} is not a context name (letters, digits, ._:-)")
            if context in groups:
                raise SettingsError(f"{source}: context {context!r} is in two groups ({groups[context]}, {group.strip()})")
            groups[context] = group.strip()
    return groups


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, SETTINGS_BY_NAME, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and every setting as an option (``--port``, ``--no-requeue-interrupted``).

    Setting options left out are absent from the parsed namespace, so they do not override the
    config file or the environment; :func:`settings_from_args` loads settings from the result.
    """
    group = parser.add_argument_group(
        "settings", f"Each also reads {ENV_PREFIX}<NAME> and the config file; flags win."
    )
    group.add_argument(
        "--config",
        metavar="PATH",
        type=Path,
        default=None,
        help=f"TOML config file [{CONFIG_ENV_VAR}; systemd passes {SYSTEM_CONFIG_PATH}]",
    )
    for s in SETTINGS:
        text = f"{s.help} [{s.env_var}; default: {s.describe_default()}]".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": s.name, "default": argparse.SUPPRESS, "help": text}
        if s.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = s.type.upper() if not s.choices else None
            kwargs["type"] = _argparse_type(s)
            if s.choices:
                kwargs["choices"] = s.choices
        group.add_argument(s.flag, **kwargs)


def _argparse_type(s: Setting) -> Any:
    def convert(text: str) -> Any:
        try:
            return s.parse_text(text, s.flag)
        except SettingsError as exc:
            # argparse prints ArgumentTypeError's message after the option name
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{s.flag}: ")) from None

    convert.__name__ = s.type
    return convert


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, for ``load_settings(overrides=...)``."""
    return {s.name: getattr(args, s.name) for s in SETTINGS if hasattr(args, s.name)}


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Settings for a command whose parser went through :func:`add_arguments`."""
    config_path = getattr(args, "config", None)
    return load_settings(config_path, env=env, overrides=overrides_from_args(args))


def settings_markdown() -> str:
    """The settings table as Markdown, for the README's settings section."""
    lines = [
        "| Setting | Type | Default | Environment / flag | Description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        kind = " \\| ".join(f"`{c}`" for c in s.choices) if s.choices else s.type
        if s.optional:
            kind += " (optional)"
        default = s.describe_default()
        default = default if default.startswith("`") else f"`{default}`"
        help_text = s.help.replace("|", "\\|")
        lines.append(
            f"| `{s.name}` | {kind} | {default} | `{s.env_var}`, `{s.flag}` | {help_text} |"
        )
    return "\n".join(lines) + "\n"


def example_toml() -> str:
    """A config file with every setting commented out at its default, each with its help.

    Uncommenting a line and editing it sets that setting; settings that are unset by default show
    an example value instead.
    """
    out = [
        "# tbftd configuration (TOML). Every setting is shown commented out at its default.",
        f"# Precedence: defaults < this file < {ENV_PREFIX}<NAME> environment variables < flags.",
        f"# Pass it with `tbftd serve --config PATH`; systemd passes {SYSTEM_CONFIG_PATH}.",
        "",
    ]
    for s in SETTINGS:
        out.extend(textwrap.wrap(s.help, width=98, initial_indent="# ", subsequent_indent="# "))
        value = s.default if s.example is None else s.example
        if s.type == "size" and value % _MEBIBYTE == 0:
            value = f"{value // _MEBIBYTE}MiB"
        note = f"{s.type}"
        if s.choices:
            note = "one of " + ", ".join(s.choices)
        if s.default is None:
            note += "; unset by default"
        elif s.example is not None:
            note += f"; default {s.describe_default()}"
        out.append(f"# ({note}; {s.env_var}, {s.flag})")
        out.append(f"#{s.name} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    # JSON string escapes are valid TOML basic-string escapes for these (ASCII) values.
    return json.dumps(str(value))
