"""server/config.py: the file, the environment and the flags, in that order of strength;
strict errors naming the key and its source; key material only from files or the environment."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from cardmint.server.config import (
    SETTINGS,
    ConfigError,
    default_config,
    find_config,
    load_config,
    mask_url,
)
from cardmint.server.domain import DomainConfig, Keyring
from cardmint.server.domain.errors import KeyringError
from cardmint.server.domain.keyring import describe
from hypothesis import given
from hypothesis import strategies as st


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_match_what_serve_did_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./cardmint.toml here
    cfg = load_config(environ={})
    assert cfg.file is None
    assert cfg.listen == "127.0.0.1:50051" and cfg.var == "var" and cfg.db is None
    assert cfg.workers == 4 and cfg.grace == 30.0 and cfg.profile == "platform"
    assert cfg.metrics is None and cfg.trace is None
    assert cfg.log_format == "auto" and cfg.log_level == "info"
    assert cfg.keys_path == Path("var/keys")
    assert cfg.db_url == f"sqlite://{(tmp_path / 'var' / 'cardmint.db').resolve()}"
    assert cfg.domain_config() == DomainConfig()
    assert set(cfg.sources.values()) == {"default"}
    assert cfg.values == default_config().values
    from cardmint.server import app  # the in-process server's defaults agree

    assert (
        cfg.listen,
        cfg.var_dir,
        cfg.grace,
        cfg.workers,
        cfg.stream_workers,
        cfg.max_in_flight,
        cfg.max_unserved_seconds,
    ) == (
        app.DEFAULT_LISTEN,
        app.DEFAULT_VAR,
        app.DEFAULT_GRACE,
        app.DEFAULT_WORKERS,
        app.DEFAULT_STREAM_WORKERS,
        app.DEFAULT_MAX_IN_FLIGHT,
        app.DEFAULT_MAX_UNSERVED,
    )


def test_every_domain_limit_is_a_setting() -> None:
    keys = {s.key for s in SETTINGS}
    for f in dataclasses.fields(DomainConfig):
        assert f.name in keys, f"DomainConfig.{f.name} has no setting"


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    file = write(
        tmp_path / "c.toml",
        'listen = "127.0.0.1:1111"\nworkers = 4\nlog_level = "warning"\ngrace = 5\nauth_cache_seconds = 0.5\n',
    )
    env = {"CARDMINT_WORKERS": "6", "CARDMINT_LOG_LEVEL": "debug", "CARDMINT_LOG_FORMAT": "json"}
    cfg = load_config(file, environ=env, flags={"log_level": "error", "listen": None})
    # flag > env > file > default, key by key
    assert (cfg.log_level, cfg.sources["log_level"]) == ("error", "flag --log-level")
    assert (cfg.workers, cfg.sources["workers"]) == (6, "env CARDMINT_WORKERS")
    assert (cfg.log_format, cfg.sources["log_format"]) == ("json", "env CARDMINT_LOG_FORMAT")
    assert (cfg.listen, cfg.sources["listen"]) == ("127.0.0.1:1111", str(file))
    assert (cfg.grace, cfg.sources["grace"]) == (5.0, str(file))
    assert cfg.domain_config().auth_cache_seconds == 0.5
    assert (cfg.profile, cfg.sources["profile"]) == ("platform", "default")


@given(
    file_v=st.none() | st.integers(1, 99),
    env_v=st.none() | st.integers(1, 99),
    flag_v=st.none() | st.integers(1, 99),
)
def test_precedence_property(file_v: int | None, env_v: int | None, flag_v: int | None) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        file = write(Path(d) / "c.toml", "" if file_v is None else f"workers = {file_v}\n")
        env = {} if env_v is None else {"CARDMINT_WORKERS": str(env_v)}
        cfg = load_config(file, environ=env, flags={"workers": flag_v})
        expected = next((v for v in (flag_v, env_v, file_v) if v is not None), 4)
        assert cfg.workers == expected


def test_relative_paths_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    file = write(tmp_path / "etc" / "c.toml", 'var = "../state"\nkeys_dir = "/abs/keys"\n')
    cfg = load_config(file, environ={})
    assert Path(cfg.var) == tmp_path / "etc" / ".." / "state"
    assert cfg.keys_path == Path("/abs/keys")
    # from the environment: relative to the working directory, as typed
    assert load_config(file, environ={"CARDMINT_VAR": "here"}).var == "here"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("listne = '127.0.0.1:1'\n", "unknown key 'listne'"),
        ("log-format = 'json'\n", "unknown key 'log-format' (did you mean log_format?)"),
        ("workers = '8'\n", "workers: must be an integer, not str '8'"),
        ("workers = true\n", "workers: must be an integer"),
        ("workers = 0\n", "workers: must be at least 1"),
        ("grace = -1\n", "grace: must be at least 0"),
        ("grace = 'soon'\n", "grace: must be a number"),
        ("log_format = 'xml'\n", "log_format: must be one of auto, json, text, not 'xml'"),
        ("listen = 'nowhere'\n", "listen: must be HOST:PORT"),
        ("metrics = 9464\n", "metrics: must be a string"),
        ("profile = 'martian'\n", "profile: no profile 'martian'"),
        ("db = 'mysql://x'\n", "db: not a database URL"),
        ("pool_min_size = 40\n", "pool_min_size (40) is above pool_max_size (32, default)"),
        ("[server]\nlisten = '127.0.0.1:1'\n", "unknown key 'server'"),
        ("workers = \n", "not valid TOML"),
        ("digest_key = 'aa'\n", "unknown key 'digest_key'"),
    ],
)
def test_file_errors_name_the_key_and_the_file(tmp_path: Path, text: str, needle: str) -> None:
    file = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as e:
        load_config(file, environ={})
    assert str(e.value).startswith(str(file)), e.value
    assert needle in str(e.value)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CARDMINT_WORKERS": "many"}, "env CARDMINT_WORKERS: workers: must be an integer, not 'many'"),
        ({"CARDMINT_LOG_LEVEL": "loud"}, "env CARDMINT_LOG_LEVEL: log_level: must be one of"),
        ({"CARDMINT_GRACE": "nan"}, "env CARDMINT_GRACE: grace: must be a finite number"),
        ({"CARDMINT_METRICS": "9464"}, "env CARDMINT_METRICS: metrics: must be HOST:PORT"),
        ({"CARDMINT_LISTEN": ""}, "env CARDMINT_LISTEN: listen: must not be empty"),
    ],
)
def test_env_errors_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match="^" + needle.replace("(", r"\(")):
        load_config(None, environ=env)


def test_flag_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^flag --pool-max-size: pool_max_size: must be an integer"):
        load_config(None, environ={}, flags={"pool_max_size": "lots"})


def test_optional_settings_can_be_turned_off_from_the_environment(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", 'metrics = "127.0.0.1:9464"\ntrace = "console"\n')
    assert load_config(file, environ={}).metrics == "127.0.0.1:9464"
    cfg = load_config(file, environ={"CARDMINT_METRICS": "off", "CARDMINT_TRACE": ""})
    assert cfg.metrics is None and cfg.trace is None
    assert cfg.sources["metrics"] == "env CARDMINT_METRICS"


def test_the_file_is_found_by_flag_then_env_then_default_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config(None, {}) == (None, "none")
    write(tmp_path / "cardmint.toml", "workers = 3\n")
    assert find_config(None, {}) == (Path("cardmint.toml"), "default location")
    assert load_config(environ={}).workers == 3
    other = write(tmp_path / "other.toml", "workers = 4\n")
    assert load_config(environ={"CARDMINT_CONFIG": str(other)}).workers == 4
    third = write(tmp_path / "third.toml", "workers = 5\n")
    assert load_config(third, environ={"CARDMINT_CONFIG": str(other)}).workers == 5
    with pytest.raises(ConfigError, match=r"missing\.toml: no such configuration file"):
        load_config(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match=r"nope\.toml: no such configuration file"):
        load_config(environ={"CARDMINT_CONFIG": str(tmp_path / "nope.toml")})


def test_passwords_are_masked() -> None:
    assert mask_url("postgresql://app:s3cret@db:5432/cm") == "postgresql://app:***@db:5432/cm"
    assert mask_url("postgresql://app@db/cm") == "postgresql://app@db/cm"
    cfg = load_config(None, environ={"CARDMINT_DB": "postgresql://app:s3cret@db/cm"})
    assert "s3cret" not in cfg.shown("db") and "***" in cfg.shown("db")


# -- key material ---------------------------------------------------------------------------


def test_key_files_wider_than_0600_are_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = Keyring.load(keys, environ={})
    assert sorted(p.name for p in keys.iterdir()) == ["digest.key", "seal-1.key"]
    for mode in (0o640, 0o604, 0o700, 0o610):
        os.chmod(keys / "seal-1.key", mode)
        with pytest.raises(KeyringError, match=r"seal-1.key has mode 0o\d+, wider than 0600.*chmod 600"):
            Keyring.load(keys, environ={})
    os.chmod(keys / "seal-1.key", 0o400)  # narrower is fine
    assert Keyring.load(keys, environ={}).seal_key == first.seal_key


def test_keys_from_the_environment_write_nothing(tmp_path: Path) -> None:
    d1, d2, s1 = (bytes([i]) * 32 for i in (1, 2, 3))
    env = {"CARDMINT_DIGEST_KEYS": f"1:{d1.hex()},2:{d2.hex()}", "CARDMINT_SEAL_KEYS": s1.hex()}
    keys = tmp_path / "keys"
    ring = Keyring.load(keys, environ=env)
    assert ring.digest_keys == {1: d1, 2: d2}
    assert [i for i, _ in ring.lookup_keys()] == [2, 1]  # newest first
    assert ring.seal_keys == {1: s1}
    assert not keys.exists()
    assert ring.sources == {"digest": "env CARDMINT_DIGEST_KEYS", "seal": "env CARDMINT_SEAL_KEYS"}
    lines = describe(keys, env)
    assert lines == [
        "digest keys: 1, 2 (current: see cardmint keys status) from env CARDMINT_DIGEST_KEYS (****)",
        "seal keys: 1 (current 1) from env CARDMINT_SEAL_KEYS (****)",
    ]
    for key in (d1, d2, s1):
        assert key.hex() not in repr(ring) and key.hex() not in "".join(lines)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("zz" * 32, "entry 1: not hexadecimal"),
        ("ab" * 31, "entry 1: 31 bytes, expected 32"),
        ("x:" + "ab" * 32, "entry 1: the key id must be a positive integer"),
        (f"1:{'ab' * 32},1:{'cd' * 32}", "key id 1 given twice"),
    ],
)
def test_bad_key_variables_are_named(tmp_path: Path, value: str, needle: str) -> None:
    with pytest.raises(KeyringError, match="^env CARDMINT_DIGEST_KEYS: .*" + needle):
        Keyring.load(tmp_path, environ={"CARDMINT_DIGEST_KEYS": value})


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for s in SETTINGS:
        assert f"| `{s.key}` | `{s.env}` |" in doc, f"docs/operations.md does not list {s.key}"
