"""``cardmint serve``'s settings: one TOML file, ``CARDMINT_*`` environment variables, flags.

Precedence, highest first: a command-line flag, then the environment variable, then the
configuration file, then the built-in default. Every setting has all four spellings::

    file key          environment variable        flag
    log_format        CARDMINT_LOG_FORMAT         --log-format

The file is ``--config FILE``, else ``$CARDMINT_CONFIG``, else ``./cardmint.toml`` when it
exists; with none of them the defaults apply (``make run`` needs no file). Relative paths
in the file (``var``, ``keys_dir``, a ``profile`` file) are relative to the file's
directory; given in the environment or as flags, to the working directory.

The loader is strict: an unknown key, a value of the wrong type or a bad value is a
``ConfigError`` naming the key and where it came from (the file's path, the variable, the
flag). Key material is never a setting: it comes from the files in ``keys_dir`` or from
the ``CARDMINT_DIGEST_KEYS`` / ``CARDMINT_SEAL_KEYS`` variables (server/domain/keyring.py),
so no key can be typed on a command line (where ``ps`` would show it).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from cardmint.server.domain_config import DomainConfig

if TYPE_CHECKING:  # tls imports grpc; it is needed only when a server starts with TLS
    from cardmint.server.tls import TlsFiles

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "SETTINGS",
    "ConfigError",
    "ServeConfig",
    "Setting",
    "StorageOptions",
    "default_config",
    "find_config",
    "load_config",
    "mask_url",
]

CONFIG_ENV = "CARDMINT_CONFIG"
DEFAULT_CONFIG = Path("cardmint.toml")
DEFAULT_SOURCE = "default"


class ConfigError(ValueError):
    """A setting that cannot be used: names the key and its source."""


def mask_url(url: str) -> str:
    """``url`` with the password masked (``postgresql://user:***@host/db``), for display."""
    return re.sub(r"(://[^/:@]+:)[^/@]*@", r"\1***@", url)


def _address(value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be HOST:PORT (port 0 picks a free one; [::1]:PORT for IPv6)")


def _db(value: str) -> None:
    if value.startswith(("postgresql://", "postgres://")):
        return
    path = value.removeprefix("sqlite://") if value.startswith("sqlite://") else value
    if value.startswith("sqlite://"):
        path = path.partition("?")[0]  # ?synchronous=full|normal|off: checked by open_storage
    if not path or path == ":memory:" or "://" in path or "=" in path:
        raise ValueError(
            f"not a database URL: {mask_url(value)!r} (postgresql://user@host/db or sqlite:///path)"
        )


def _profile(value: str) -> None:
    from cardmint.server.domain.profiles import ProfileError, load_profile

    try:
        load_profile(value)
    except ProfileError as e:
        raise ValueError(str(e)) from None


class StorageOptions(TypedDict):
    """open_storage's keyword arguments."""

    pool_min_size: int
    pool_max_size: int
    busy_timeout_ms: int


@dataclass(frozen=True)
class Setting:
    """One setting. ``kind``: str, int, float or path; ``choices`` limit a str;
    ``optional``: may be left unset (None: off, or a value derived from others)."""

    key: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    optional: bool = False
    check: Callable[[str], None] | None = None
    url: bool = False  # a database URL: its password is masked when shown

    @property
    def env(self) -> str:
        return "CARDMINT_" + self.key.upper()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


_DOMAIN_HELP = {
    "transfers_per_year": "times a registered card may change holder per year",
    "max_check_batch": "codes in one Keys.Check call",
    "max_generate": "codes in one Keys.Generate call",
    "max_lot": "cards in one lot",
    "lot_chunk": "cards minted and written per chunk of a lot",
    "stream_chunk": "codes per message of a streamed lot export",
    "page_limit_max": "largest page a list call returns",
    "auth_cache_seconds": "seconds a verified token is remembered (0: ask the database every call)",
    "order_ttl_seconds": "seconds a reservation holds its codes unpaid",
    "delivery_deadline_seconds": "seconds a paid order may wait for review before it is refunded",
    "order_max_items": "lines per order",
    "order_max_codes": "codes per order",
    "held_codes_per_account": "codes one account may hold in unpaid reservations",
    "held_codes_per_address": "codes one client address may hold in unpaid reservations",
    "order_reveals_per_hour": "full views of delivered codes per account and hour",
    "order_sweep_seconds": "period of the order sweeper (0: no sweeper thread)",
    "idempotency_days": "days a request id is answered as its first call (0: forever)",
    "housekeeping_seconds": "period of housekeeping: expired request ids, abandoned lots (0: no thread)",
}
# Domain settings that are not plain numbers: their own Setting below.
_DOMAIN_SPECIAL = ("profile", "trusted_proxies")

_DOMAIN_DEFAULTS = DomainConfig()
_DOMAIN_FIELDS = [f for f in dataclasses.fields(DomainConfig) if f.name not in _DOMAIN_SPECIAL]


def _cidrs(value: str) -> None:
    from cardmint.server.api._convert import trusted_networks

    trusted_networks(_split_list(value))


def _split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "db",
        "str",
        None,
        "database URL: postgresql://user@host:port/db or sqlite:///path (default: VAR/cardmint.db)",
        optional=True,
        check=_db,
        url=True,
    ),
    Setting("listen", "str", "127.0.0.1:50051", "address the gRPC server listens on", check=_address),
    Setting("var", "path", "var", "directory for the SQLite file and, by default, the keys"),
    Setting(
        "keys_dir",
        "path",
        None,
        "directory of the key files (default: VAR/keys; created with new keys on first start)",
        optional=True,
    ),
    Setting("grace", "float", 30.0, "seconds to let in-flight calls finish on SIGTERM", minimum=0),
    Setting(
        "workers",
        "int",
        4,
        "threads handling unary calls; few on purpose (docs/operations.md, Load and overload): "
        "raise it only when calls wait long on a far database",
        minimum=1,
    ),
    Setting(
        "stream_workers",
        "int",
        32,
        "threads handling streaming calls (event subscriptions, bulk checks, lot minting and export)",
        minimum=1,
    ),
    Setting(
        "processes",
        "int",
        1,
        "server processes on the one database, process k on the listen port + k (metrics and health ports + k); "
        "one per core serves the most (docs/scaling.md, Several processes on one machine)",
        minimum=1,
    ),
    Setting(
        "health_probe",
        "float",
        2.0,
        "seconds between storage health probes: health is NOT_SERVING while a probe write fails "
        "(0: one probe, at start)",
        minimum=0,
    ),
    Setting(
        "health_listen",
        "str",
        None,
        "also answer grpc.health.v1 Check at HOST:PORT, on threads of its own and outside the "
        "in-flight limit, so a load balancer's probe is answered while the server is at its limit "
        "(process k on this port + k; default: off)",
        optional=True,
        check=_address,
    ),
    Setting(
        "max_in_flight",
        "int",
        128,
        "calls queued or running before new ones are refused at once with RESOURCE_EXHAUSTED; 0: no limit",
        minimum=0,
    ),
    Setting(
        "max_unserved_seconds",
        "int",
        2,
        "seconds a call may wait in grpc core before the server takes it; older ones are dropped "
        "(the caller hears CANCELLED, nothing ran); 0: grpc's default (30)",
        minimum=0,
    ),
    Setting(
        "profile",
        "str",
        "platform",
        "compliance profile: platform, cn-prepaid, or a profile .toml file",
        check=_profile,
    ),
    Setting(
        "metrics",
        "str",
        None,
        "serve Prometheus metrics over HTTP at HOST:PORT (default: off)",
        optional=True,
        check=_address,
    ),
    Setting(
        "log_format",
        "str",
        "auto",
        "log lines as json or text; auto: text on a terminal, else JSON",
        choices=("auto", "json", "text"),
    ),
    Setting(
        "log_level",
        "str",
        "info",
        "least severe log level written",
        choices=("debug", "info", "warning", "error"),
    ),
    Setting(
        "trace",
        "str",
        None,
        "export OpenTelemetry spans: console or otlp (needs the tracing extra; default: off)",
        choices=("console", "otlp"),
        optional=True,
    ),
    Setting(
        "trusted_proxies",
        "str",
        None,
        "load balancers whose x-forwarded-for names the client: addresses or CIDRs, comma-separated "
        "(default: none, the connection's peer is the client)",
        optional=True,
        check=_cidrs,
    ),
    Setting(
        "tls_cert",
        "path",
        None,
        "serve TLS with this PEM certificate chain (with tls_key; default: plaintext)",
        optional=True,
    ),
    Setting("tls_key", "path", None, "the certificate's PEM private key (mode 0600)", optional=True),
    Setting(
        "client_ca",
        "path",
        None,
        "mutual TLS: require client certificates signed by the CA(s) in this PEM file",
        optional=True,
    ),
    Setting("pool_min_size", "int", 1, "PostgreSQL: connections the pool keeps open", minimum=0),
    Setting("pool_max_size", "int", 32, "PostgreSQL: most connections the pool opens", minimum=1),
    Setting(
        "sqlite_busy_timeout_ms",
        "int",
        30_000,
        "SQLite: milliseconds to wait for a lock held by another process",
        minimum=0,
    ),
    *(
        Setting(
            f.name,
            "float" if isinstance(getattr(_DOMAIN_DEFAULTS, f.name), float) else "int",
            getattr(_DOMAIN_DEFAULTS, f.name),
            _DOMAIN_HELP[f.name],
            minimum=0
            if f.name
            in ("auth_cache_seconds", "order_sweep_seconds", "idempotency_days", "housekeeping_seconds")
            else 1,
        )
        for f in _DOMAIN_FIELDS
    ),
)
_BY_KEY = {s.key: s for s in SETTINGS}


@dataclass(frozen=True)
class ServeConfig:
    """The effective settings; ``sources[key]``: where each came from (``default``, the
    file's path, ``env CARDMINT_…``, ``flag --…``)."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    file: Path | None = None

    def __getattr__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def var_dir(self) -> Path:
        return Path(self.values["var"])

    @property
    def keys_path(self) -> Path:
        keys = self.values["keys_dir"]
        return Path(keys) if keys is not None else self.var_dir / "keys"

    @property
    def db_url(self) -> str:
        db = self.values["db"]
        return str(db) if db is not None else f"sqlite://{(self.var_dir / 'cardmint.db').resolve()}"

    def storage_options(self) -> StorageOptions:
        """open_storage's keyword arguments."""
        return {
            "pool_min_size": self.values["pool_min_size"],
            "pool_max_size": self.values["pool_max_size"],
            "busy_timeout_ms": self.values["sqlite_busy_timeout_ms"],
        }

    def domain_config(self) -> DomainConfig:
        proxies = self.values["trusted_proxies"]
        return DomainConfig(
            profile=self.values["profile"],
            trusted_proxies=tuple(_split_list(proxies)) if proxies else (),
            **{f.name: self.values[f.name] for f in _DOMAIN_FIELDS},
        )

    def tls_files(self) -> TlsFiles | None:
        """The TLS files (None: plaintext); a ConfigError when only one of cert and key is set."""
        cert, key, ca = self.values["tls_cert"], self.values["tls_key"], self.values["client_ca"]
        if cert is None and key is None and ca is None:
            return None
        if cert is None or key is None:
            given = [k for k in ("tls_cert", "tls_key", "client_ca") if self.values[k] is not None]
            raise ConfigError(
                f"{', '.join(f'{k} ({self.sources[k]})' for k in given)}: TLS needs both tls_cert and"
                " tls_key (client_ca adds mutual TLS)"
            )
        from cardmint.server.tls import TlsFiles

        return TlsFiles(Path(cert), Path(key), Path(ca) if ca is not None else None)

    def shown(self, key: str) -> str:
        """The value of ``key`` for display, secrets masked."""
        value = self.values[key]
        if key == "db":
            return mask_url(self.db_url) + (" (derived from var)" if value is None else "")
        if key == "keys_dir" and value is None:
            return f"{self.keys_path} (derived from var)"
        return "(off)" if value is None else str(value)


def default_config() -> ServeConfig:
    """Every setting at its default (no file, no environment, no flags)."""
    return ServeConfig({s.key: s.default for s in SETTINGS}, dict.fromkeys(_BY_KEY, DEFAULT_SOURCE))


def _convert(s: Setting, raw: object, source: str, base: Path | None) -> Any:
    """``raw`` (a TOML value, or a string from the environment or a flag) as ``s`` wants it."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{source}: {s.key}: {problem}")

    from_text = isinstance(raw, str) and base is None  # env and flags give text
    value: Any
    if s.kind == "int":
        if from_text:
            try:
                raw = int(str(raw).strip())
            except ValueError:
                raise fail(f"must be an integer, not {raw!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise fail(f"must be an integer, not {type(raw).__name__} {raw!r}")
        value = raw
    elif s.kind == "float":
        if from_text:
            try:
                raw = float(str(raw).strip())
            except ValueError:
                raise fail(f"must be a number, not {raw!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise fail(f"must be a number, not {type(raw).__name__} {raw!r}")
        value = float(raw)
        if not math.isfinite(value):
            raise fail("must be a finite number")
    else:
        if not isinstance(raw, str):
            raise fail(f"must be a string, not {type(raw).__name__} {raw!r}")
        if not raw:
            raise fail("must not be empty")
        value = raw
        if s.kind == "path" or (s.key == "profile" and raw.endswith(".toml")):
            p = Path(raw).expanduser()
            value = str(base / p if base is not None and not p.is_absolute() else p)
    if s.minimum is not None and value < s.minimum:
        raise fail(f"must be at least {s.minimum:g}, not {value!r}")
    if s.choices and value not in s.choices:
        raise fail(f"must be one of {', '.join(s.choices)}, not {value!r}")
    if s.check is not None:
        try:
            s.check(value)
        except ValueError as e:
            raise fail(str(e)) from None
    return value


def find_config(path: str | Path | None, environ: Mapping[str, str]) -> tuple[Path | None, str]:
    """The configuration file to read and how it was chosen: ``--config``, then
    ``$CARDMINT_CONFIG``, then ``./cardmint.toml`` when it exists (None: no file)."""
    if path is not None:
        return Path(path), "flag --config"
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]), f"env {CONFIG_ENV}"
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG, "default location"
    return None, "none"


def read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return data


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> ServeConfig:
    """The effective settings: ``flags`` (key -> value given on the command line, None =
    not given) over ``environ``'s ``CARDMINT_*`` over the file over the defaults."""
    environ = os.environ if environ is None else environ
    file, _how = find_config(path, environ)
    values: dict[str, Any] = {s.key: s.default for s in SETTINGS}
    sources = dict.fromkeys(values, DEFAULT_SOURCE)
    if file is not None:
        data = read_file(file)
        base = file.resolve().parent
        for key, raw in data.items():
            s = _BY_KEY.get(key)
            if s is None:
                near = [k for k in _BY_KEY if k.replace("_", "") == key.replace("_", "").replace("-", "")]
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise ConfigError(f"{file}: unknown key {key!r}{hint}")
            values[key] = _convert(s, raw, str(file), base)
            sources[key] = str(file)
    for s in SETTINGS:
        if s.env in environ:
            raw = environ[s.env]
            source = f"env {s.env}"
            if s.optional and raw.strip() in ("", "off", "none"):
                values[s.key], sources[s.key] = None, source
            else:
                values[s.key], sources[s.key] = _convert(s, raw, source, None), source
    for key, raw in (flags or {}).items():
        if raw is None:
            continue
        s = _BY_KEY[key]
        values[key] = _convert(s, str(raw), f"flag {s.flag}", None)
        sources[key] = f"flag {s.flag}"
    if values["pool_min_size"] > values["pool_max_size"]:
        raise ConfigError(
            f"{sources['pool_min_size']}: pool_min_size ({values['pool_min_size']}) is above "
            f"pool_max_size ({values['pool_max_size']}, {sources['pool_max_size']})"
        )
    return ServeConfig(values, sources, file)
