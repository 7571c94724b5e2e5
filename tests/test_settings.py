"""Settings: one table, four sources, clear errors, and every setting documented."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from service.settings import (
    SETTINGS,
    SETTINGS_BY_NAME,
    BlockName,
    BNMode,
    FinetuneProfile,
    MeterKind,
    Settings,
    SettingsError,
    add_arguments,
    example_toml,
    is_loopback,
    load_settings,
    overrides_from_args,
    settings_from_args,
    settings_markdown,
)

README = Path(__file__).resolve().parent.parent / "README.md"
PRINT_TABLE = 'python -c "from service.settings import settings_markdown as m; print(m())"'


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tbftd.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings(env={})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.api_token) == ("127.0.0.1", 8470, None)
    assert settings.data_dir == Path("tbftd-data")
    assert settings.min_samples == 200 and settings.max_body_bytes == 16 * 1024 * 1024
    assert settings.sources["port"] == "default"
    assert settings.block_mapping().feature == "block3"
    assert settings.trainer_threads is None


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        'port = 8001\nepochs = 3\nbn_mode = "frozen"\nmeter_kind = "um25c"\n',
    )
    env = {"TBFTD_PORT": "8002", "TBFTD_EPOCHS": "4", "TBFTD_LOG_LEVEL": "debug"}
    overrides = {"port": 8003, "min_samples": None}  # None: a flag that was not given

    settings = load_settings(config, env=env, overrides=overrides)

    assert settings.port == 8003 and settings.sources["port"] == "--port"
    assert settings.epochs == 4 and settings.sources["epochs"] == "TBFTD_EPOCHS"
    assert settings.log_level == "debug"
    assert settings.bn_mode == "frozen" and settings.sources["bn_mode"] == f"{config}: bn_mode"
    assert settings.meter_kind == "um25c"
    assert settings.min_samples == 200 and settings.sources["min_samples"] == "default"


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path, "keep_versions = 9\n")
    assert load_settings(env={"TBFTD_CONFIG": str(config)}).keep_versions == 9


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TBFTD_PORT": "abc"}, "TBFTD_PORT: expected an integer, got 'abc'"),
        ({"TBFTD_PORT": "70000"}, "TBFTD_PORT: must be at most 65535, got 70000"),
        ({"TBFTD_VAL_FRACTION": "half"}, "TBFTD_VAL_FRACTION: expected a number, got 'half'"),
        ({"TBFTD_REQUEUE_INTERRUPTED": "maybe"}, "TBFTD_REQUEUE_INTERRUPTED: expected a boolean"),
        ({"TBFTD_BN_MODE": "sideways"}, "TBFTD_BN_MODE: expected one of adapt, frozen, train, got"),
        ({"TBFTD_MAX_BODY_BYTES": "12 potatoes"}, "TBFTD_MAX_BODY_BYTES: expected a byte count"),
        ({"TBFTD_BASELINE_SECONDS": "nan"}, "TBFTD_BASELINE_SECONDS: expected a finite number"),
    ],
)
def test_environment_type_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env=env)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('port = "abc"', "port: expected an integer, got 'abc'"),
        ("port = 1.5", "port: expected an integer, got 1.5"),
        ('requeue_interrupted = "yes please"', "requeue_interrupted: expected a boolean"),
        ("host = 127", "host: expected a string, got 127"),
        ('block_for_input = "block9"', "block_for_input: expected one of block1, block2"),
        ("epochs = 0", "epochs: must be at least 1, got 0"),
    ],
)
def test_config_type_errors_name_the_file_and_key(tmp_path: Path, toml: str, message: str) -> None:
    config = write_config(tmp_path, toml + "\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(config, env={})
    assert str(caught.value).startswith(f"{config}: {message}")


def test_override_errors_name_the_flag() -> None:
    with pytest.raises(SettingsError, match="^--port: expected an integer, got 'x'$"):
        load_settings(env={}, overrides={"port": "x"})
    with pytest.raises(SettingsError, match="unknown setting 'prot' \\(did you mean 'port'\\?\\)"):
        load_settings(env={}, overrides={"prot": 1})


def test_unknown_config_keys_are_rejected(tmp_path: Path) -> None:
    config = write_config(tmp_path, "prot = 8471\n")
    with pytest.raises(SettingsError, match="unknown setting 'prot' \\(did you mean 'port'\\?\\)"):
        load_settings(config, env={})
    nested = write_config(tmp_path, "[meter]\nkind = 'um25c'\n")
    with pytest.raises(SettingsError, match="unknown setting 'meter'"):
        load_settings(nested, env={})


def test_unreadable_config_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(tmp_path / "missing.toml", env={})
    broken = write_config(tmp_path, "port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(broken, env={})


def test_text_values(tmp_path: Path) -> None:
    settings = load_settings(
        env={
            "TBFTD_MAX_BODY_BYTES": "1MiB",
            "TBFTD_MAX_BUFFER_BYTES": "2 GiB",
            "TBFTD_REQUEUE_INTERRUPTED": "off",
            "TBFTD_METER_PORT": "",  # empty: unset
            "TBFTD_METER_KIND": "UM25C",
            "TBFTD_TRAINER_THREADS": "3",
            "TBFTD_BASE_MODEL": "~/base.pt",
        }
    )
    assert settings.max_body_bytes == 1024 * 1024 and settings.max_buffer_bytes == 2 * 1024**3
    assert settings.requeue_interrupted is False
    assert settings.meter_port is None and settings.meter_kind == "um25c"
    assert settings.trainer_threads == 3
    assert settings.base_model == Path("~/base.pt").expanduser()


def test_state_directory_is_the_default_data_dir(tmp_path: Path) -> None:
    env = {"STATE_DIRECTORY": "/var/lib/tbftd:/var/lib/other"}
    assert load_settings(env=env).data_dir == Path("/var/lib/tbftd")
    assert load_settings(env=env).database_path == Path("/var/lib/tbftd/tbftd.sqlite3")
    # Any explicit source still wins over systemd's directory.
    assert load_settings(env={**env, "TBFTD_DATA_DIR": "/srv/x"}).data_dir == Path("/srv/x")
    config = write_config(tmp_path, f'data_dir = "{tmp_path}"\n')
    assert load_settings(config, env=env).data_dir == tmp_path
    assert load_settings(env={"STATE_DIRECTORY": ""}).data_dir == Path("tbftd-data")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "pi.local"])
def test_a_public_address_requires_a_token(host: str) -> None:
    with pytest.raises(SettingsError, match="^api_token: required when host is not a loopback"):
        load_settings(env={"TBFTD_HOST": host})
    settings = load_settings(env={"TBFTD_HOST": host, "TBFTD_API_TOKEN": "s3cret"})
    assert settings.host == host and settings.api_token == "s3cret"
    assert settings.redacted()["api_token"] == "***"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    assert is_loopback(host)
    assert load_settings(env={}, overrides={"host": host}).api_token is None


def test_settings_constructed_directly_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="port: must be at least 1"):
        Settings(port=0)
    with pytest.raises(SettingsError, match="api_token"):
        dataclasses.replace(Settings(), host="0.0.0.0")
    assert Settings(data_dir="x").data_dir == Path("x")  # type: ignore[arg-type]


def test_line_keys_need_columns() -> None:
    with pytest.raises(SettingsError, match="meter_line_keys: needs meter_line_columns"):
        load_settings(env={"TBFTD_METER_LINE_KEYS": "V,I"})


def test_unknown_environment_variables_are_warned_about() -> None:
    settings = load_settings(env={"TBFTD_PROT": "1", "TBFTD_CONFIG": "", "OTHER": "x"})
    assert settings.warnings == ("TBFTD_PROT: not a setting (did you mean 'port'?)",)


def test_command_line_flags_come_from_the_table() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {a.dest: a.option_strings for a in parser._actions}
    for s in SETTINGS:
        assert s.flag in flags[s.name]

    args = parser.parse_args(
        ["--port", "9000", "--no-requeue-interrupted", "--data-dir", "/tmp/d"]
        + ["--max-body-bytes", "1MiB"]
    )
    overrides = overrides_from_args(args)
    assert overrides == {
        "port": 9000, "requeue_interrupted": False, "data_dir": Path("/tmp/d"),
        "max_body_bytes": 1024 * 1024,
    }  # fmt: skip
    settings = load_settings(env={"TBFTD_PORT": "1"}, overrides=overrides)
    assert settings.port == 9000 and settings.sources["port"] == "--port"


def test_settings_from_args_reads_the_config_flag(tmp_path: Path) -> None:
    config = write_config(tmp_path, "port = 8001\nepochs = 2\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(config), "--epochs", "5"])
    settings = settings_from_args(args, env={"TBFTD_CONFIG": "/nonexistent.toml"})
    assert (settings.port, settings.epochs) == (8001, 5)
    assert settings_from_args(parser.parse_args([]), env={}) == Settings()


def test_bad_flags_are_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--port", "abc"])
    assert "argument --port: expected an integer, got 'abc'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--bn-mode", "sideways"])


def test_every_setting_has_help_and_a_type() -> None:
    assert len(SETTINGS) == len(SETTINGS_BY_NAME) >= 25
    for s in SETTINGS:
        assert s.help.strip().endswith("."), f"{s.name}: help should be a sentence"
        assert s.type in ("int", "float", "bool", "str", "path", "size", "choice")
        if s.default is None:
            assert s.optional and s.example is not None, f"{s.name}: needs an example value"


def test_every_setting_is_in_the_readme() -> None:
    text = README.read_text() if README.exists() else ""
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in text]
    assert not missing, (
        f"README.md does not document {', '.join(missing)}: paste the output of `{PRINT_TABLE}` "
        "into its settings section"
    )


def test_markdown_table_lists_every_setting() -> None:
    table = settings_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(SETTINGS)
    for s, row in zip(SETTINGS, rows):
        assert row.startswith(f"| `{s.name}` |")
        assert f"`{s.env_var}`" in row and f"`{s.flag}`" in row
        assert row.count(" | ") == 4  # pipes inside cells are escaped


def test_example_config_is_valid_toml_and_uncomments_to_valid_settings(tmp_path: Path) -> None:
    text = example_toml()
    assert tomllib.loads(text) == {}  # everything commented out
    # Settings are "#name = value"; help and notes are "# text".
    lines = text.splitlines()
    assigned = [line[1:] for line in lines if line.startswith("#") and line[1:2].isalpha()]
    assert [line.split(" = ")[0] for line in assigned] == [s.name for s in SETTINGS]

    config = write_config(tmp_path, "\n".join(assigned) + "\n")
    settings = load_settings(config, env={})
    for s in SETTINGS:
        if s.example is None:
            assert getattr(settings, s.name) == s.default, s.name


def test_literal_choices_agree_with_the_modules_they_configure() -> None:
    from device.finetune import BN_MODES
    from device.profiles import PROFILES
    from drift.types import BLOCK_NAMES
    from energy.discovery import KINDS

    assert set(typing.get_args(MeterKind)) == {"auto", *KINDS}
    assert typing.get_args(BNMode) == BN_MODES
    assert typing.get_args(FinetuneProfile) == PROFILES
    assert typing.get_args(BlockName) == BLOCK_NAMES


def test_settings_import_neither_torch_nor_serial() -> None:
    code = (
        "import sys, service.settings; "
        "assert not {'torch', 'serial'} & set(sys.modules), 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
