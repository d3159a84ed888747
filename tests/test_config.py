"""Configuration: sources, precedence, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from envkit import ConfigError, load_config
from envkit.config import port_request


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_zero_config_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    assert config.project == tmp_path.name
    assert config.database == f"{tmp_path.name.lower().replace('-', '_')}_test"
    assert config.backend == "auto"
    assert config.postgres.enabled and config.redis.enabled
    assert port_request(config.postgres.port, 5433) == (5433, False)
    assert port_request(config.redis.port, 6380) == (6380, False)
    assert config.postgres.password is None  # generated per environment


def test_pyproject_tool_table_and_project_name(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "My-App"\n\n[tool.envkit.postgres]\nport = 6000\n')
    config = load_config(tmp_path, environ={})
    assert config.project == "My-App"
    assert config.database == "my_app_test"
    assert config.postgres.port == 6000
    assert port_request(config.postgres.port, 5433) == (6000, True)


def test_envkit_toml_found_from_a_subdirectory(tmp_path: Path) -> None:
    write(tmp_path / "envkit.toml", 'project = "x"\n[redis]\nenabled = false\n')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    config = load_config(sub, environ={})
    assert config.root == tmp_path.resolve()
    assert not config.redis.enabled


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    write(tmp_path / "envkit.toml", 'backend = "docker"\ntimeout = 5\n[postgres]\nport = 7000\n')
    env = {"ENVKIT_BACKEND": "native", "ENVKIT_POSTGRES_PORT": "7001", "ENVKIT_TIMEOUT": "9.5"}
    config = load_config(tmp_path, environ=env, overrides={"postgres.port": 7002})
    assert config.backend == "native"
    assert config.timeout == 9.5
    assert config.postgres.port == 7002


def test_env_aliases_for_binaries(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={"ENVKIT_PG_BINDIR": "/opt/pg/bin", "ENVKIT_REDIS_SERVER": "/opt/redis-server"})
    assert config.postgres.bindir == "/opt/pg/bin"
    assert config.redis.server == "/opt/redis-server"


def test_dotenv_files_are_read_when_named(tmp_path: Path) -> None:
    write(tmp_path / ".env.ci", "ENVKIT_REDIS_DB=3\nAPP_SECRET='s3cret'\n")
    write(tmp_path / "envkit.toml", 'env_files = [".env.ci"]\n')
    config = load_config(tmp_path, environ={"ENVKIT_TIMEOUT": "4"})
    assert config.redis.db == 3
    assert config.environ["APP_SECRET"] == "s3cret"
    assert config.timeout == 4


def test_real_environment_wins_over_dotenv(tmp_path: Path) -> None:
    write(tmp_path / ".env.ci", "ENVKIT_REDIS_DB=3\n")
    write(tmp_path / "envkit.toml", 'env_files = [".env.ci"]\n')
    assert load_config(tmp_path, environ={"ENVKIT_REDIS_DB": "5"}).redis.db == 5


def test_unknown_key_gets_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path / "envkit.toml", "[postgres]\nprot = 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    message = str(info.value)
    assert str(path) in message and "postgres.prot" in message and "did you mean 'postgres.port'" in message.replace('"', "'")


def test_unknown_section_gets_did_you_mean(tmp_path: Path) -> None:
    write(tmp_path / "envkit.toml", "[migration]\nkind = 'sql'\n")
    with pytest.raises(ConfigError, match="did you mean 'migrations'"):
        load_config(tmp_path, environ={})


def test_wrong_type_names_key_expected_and_found(tmp_path: Path) -> None:
    write(tmp_path / "envkit.toml", '[redis]\ndb = "zero"\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    message = str(info.value)
    assert "redis.db" in message and "an integer" in message and "'zero'" in message


def test_wrong_type_from_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$ENVKIT_TIMEOUT"):
        load_config(tmp_path, environ={"ENVKIT_TIMEOUT": "soon"})


def test_bad_choice_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'native'"):
        load_config(tmp_path, environ={"ENVKIT_BACKEND": "nativ"})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "envkit.toml", "[postgres\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(tmp_path, environ={})


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('[postgres]\nport = "fast"\n', "postgres.port must be a port number"),
        ("[postgres]\nport = 70000\n", "between 0 and 65535"),
        ('[migrations]\nkind = "metadata"\n', "needs migrations.target"),
        ("[seed]\nbcrypt_rounds = 2\n", "between 4 and 31"),
        ('[seed.generate]\nid = "serial"\n', "'uuid4' or 'now'"),
        ("timeout = 0\n", "positive"),
    ],
)
def test_validation(tmp_path: Path, body: str, match: str) -> None:
    write(tmp_path / "envkit.toml", body)
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path, environ={})


def test_port_auto_and_zero(tmp_path: Path) -> None:
    write(tmp_path / "envkit.toml", '[postgres]\nport = "auto"\n[redis]\nport = 0\n')
    config = load_config(tmp_path, environ={})
    assert port_request(config.postgres.port, 5433) == (0, False)
    assert port_request(config.redis.port, 6380) == (0, False)


def test_name_differs_per_checkout(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        write(tmp_path / d / "envkit.toml", 'project = "same"\n')
    a, b = load_config(tmp_path / "a", environ={}), load_config(tmp_path / "b", environ={})
    assert a.database == b.database == "same_test"
    assert a.name != b.name and a.name.startswith("same-")


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    with pytest.raises(AttributeError):
        config.backend = "docker"  # type: ignore[misc]


@pytest.mark.parametrize(("body", "env", "match"), [
    ("[postgres]\nport = -1\n", {}, "postgres.port must be between 0 and 65535"),
    ("[redis]\nport = 65536\n", {}, "redis.port must be between 0 and 65535"),
    ("", {"ENVKIT_POSTGRES_PORT": "-1"}, "postgres.port must be between 0 and 65535"),
    ("[redis]\ndb = -1\n", {}, "redis.db must be a database index, 0 or more"),
    ("cache_max_mb = -5\n", {}, "cache_max_mb must be 0 or more"),
    ("", {"ENVKIT_TIMEOUT": "nan"}, "timeout must be a positive number"),
    ("", {"ENVKIT_TIMEOUT": "inf"}, "timeout must be a positive number"),
])
def test_out_of_range_numbers_are_a_paragraph_not_a_traceback(tmp_path: Path, body: str, env: dict[str, str],
                                                               match: str) -> None:
    write(tmp_path / "envkit.toml", body)
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path, environ=env)


def test_unknown_envkit_variable_warns_with_did_you_mean(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="envkit"):
        config = load_config(tmp_path, environ={"ENVKIT_POSTGRES_PROT": "5440", "ENVKIT_NAME": "x", "ENVKIT_REQUIRE": "1",
                                                "ENVKIT_WHATEVER_ELSE_ENTIRELY": "1"})
    assert config.postgres.port is None
    text = caplog.text
    assert "ENVKIT_POSTGRES_PROT" in text and "did you mean ENVKIT_POSTGRES_PORT?" in text
    assert "ENVKIT_WHATEVER_ELSE_ENTIRELY" in text  # no suggestion, but still named
    assert "ENVKIT_NAME" not in text and "ENVKIT_REQUIRE" not in text  # what envkit itself exports and reads


def test_bool_from_environment_names_the_variable_not_an_internal_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={"ENVKIT_REDIS_ENABLED": "nope"})
    message = str(info.value)
    assert "$ENVKIT_REDIS_ENABLED" in message and "redis.enabled" in message and "'nope'" in message
    assert "true/false" in message and "_EnvValue" not in message


def test_lists_from_the_environment_comma_separated_or_json(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={"ENVKIT_SEED_SQL": " a.sql, ,b.sql ",
                                            "ENVKIT_MIGRATIONS_COMMAND": '["sh", "-c", "echo a, b"]'})
    assert config.seed.sql == ["a.sql", "b.sql"]
    assert config.migrations.command == ["sh", "-c", "echo a, b"]
    with pytest.raises(ConfigError, match=r"\$ENVKIT_SEED_SQL"):
        load_config(tmp_path, environ={"ENVKIT_SEED_SQL": '["a.sql", {"b": 1}]'})


def test_run_dir_from_the_environment(tmp_path: Path) -> None:
    assert load_config(tmp_path, environ={"ENVKIT_RUN_DIR": "/var/tmp"}).run_dir == "/var/tmp"


def test_every_envkit_name_envkit_itself_uses_is_known() -> None:
    """No warning for a name envkit reads or sets (a new one must be added to config._ENV_OTHERS)."""
    import re

    from envkit.config import env_names

    package = Path(__file__).resolve().parents[1] / "envkit"
    used = {m for f in package.rglob("*.py") for m in re.findall(r"\bENVKIT_[A-Z0-9_]*[A-Z0-9]\b", f.read_text())}
    assert used and used <= env_names(), sorted(used - env_names())
