"""Configuration: the TOML file, environment overrides and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpcgate.config import (
    AuditConfig,
    AuthConfig,
    ConfigError,
    EventsConfig,
    HealthConfig,
    LimitsConfig,
    MachineConfig,
    MetricsConfig,
    MonitorConfig,
    ServerConfig,
    SshConfig,
    StatusConfig,
    StoreConfig,
    WebhooksConfig,
    load_config,
)
from tests.conftest import REPO


def test_defaults_without_a_file() -> None:
    config = load_config(None, environ={})
    assert config.server.port == 8080 and config.limits.timeout == 60
    assert config.limits.output_bytes == 1024 * 1024 and config.machines == {}


def test_the_example_and_demo_configs_load() -> None:
    example = load_config(REPO / "config" / "example.toml", environ={})
    assert "ln3" in example.machines
    assert load_config(REPO / "config" / "demo.toml", environ={}).auth.backend == "pam"


def test_the_example_config_names_every_setting() -> None:
    text = (REPO / "config" / "example.toml").read_text()
    sections = [ServerConfig, AuthConfig, AuditConfig, LimitsConfig, StoreConfig, StatusConfig]
    sections += [MonitorConfig, MachineConfig, SshConfig, MetricsConfig, HealthConfig]
    sections += [EventsConfig, WebhooksConfig]
    missing = [
        f"{section.__name__}.{name}"
        for section in sections
        for name in section.model_fields
        if not re.search(rf"^#? ?({name} =|\[machines\.\w+\.{name}\])", text, re.MULTILINE)
    ]
    assert missing == [], "config/example.toml documents every setting (the README says so)"


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 8000\n[machines.ln3]\n")
    config = load_config(
        path,
        environ={
            "HPCGATE_SERVER__PORT": "9001",
            "HPCGATE_LIMITS__TIMEOUT": "2.5",
            "HPCGATE_MACHINES__LN3__COMMANDS__SBATCH": "yhbatch",
            "HPCGATE_AUTH__COOKIE_SECURE": "true",
            "UNRELATED": "x",
        },
    )
    assert config.server.port == 9001 and config.limits.timeout == 2.5
    assert config.machines["ln3"].commands == {"sbatch": "yhbatch"}
    assert config.auth.cookie_secure is True


def test_the_config_path_can_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 8111\n")
    assert load_config(None, environ={"HPCGATE_CONFIG": str(path)}).server.port == 8111


def test_per_machine_limits_override_the_global_ones(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[limits]\ntimeout = 30\n[machines.a]\nlimits = { timeout = 5 }\n[machines.b]\n"
    )
    config = load_config(path, environ={})
    assert config.machines["a"].effective_limits(config.limits).timeout == 5
    assert config.machines["b"].effective_limits(config.limits).timeout == 30


def test_users_file_is_relative_to_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[auth]\nbackend = "users_file"\nusers_file = "users.toml"\n')
    (tmp_path / "users.toml").write_text("")
    assert load_config(path, environ={}).auth.users_file == tmp_path / "users.toml"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[server]\nport = 0\n", "server.port"),
        ("[server]\nprot = 1\n", "server.prot"),
        ("[auth]\nbackend = 'ldap'\n", "auth.backend"),
        ("[auth]\nbackend = 'users_file'\n", "needs auth.users_file"),
        ("[machines.'bad name']\n", "machine name"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_errors_say_where(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_config(path, environ={})


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_an_override_into_a_value_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 8000\n")
    with pytest.raises(ConfigError, match="'port' is a value"):
        load_config(path, environ={"HPCGATE_SERVER__PORT__X": "1"})
