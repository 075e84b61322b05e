"""Shared fixtures: one suite, run against every kernel backend and both storage backends.

`kernel` is parametrized over rust, cython and python. When CARDMINT_REQUIRE_BACKENDS
lists backends (the README's test command sets all three), a missing one is an error,
not a skip: a skipped backend would be a missing test.

Storage (tests/server, tests/domain, tests/api, tests/cli_server): ``backend`` is
parametrized over sqlite and postgres, and ``storage_url`` is a fresh database of it for
each test. The PostgreSQL side is ONE throwaway cluster per session (``pg_server``),
defined here and only here: a conftest that imports a fixture defines it again, with a
cache of its own, and would start a cluster of its own. Each test gets its own database on
the cluster, dropped afterwards.

The cluster comes from Debian's ``postgresql`` package: ``initdb`` into a temporary
directory, listening on 127.0.0.1 only, on a free port, stopped at the end of the session.
PostgreSQL refuses to run as root, so when we are root it runs as the ``postgres`` user.
Missing binaries FAIL the tests: a skipped PostgreSQL test would be a missing test.
``CARDMINT_PG_BIN`` names the directory of ``initdb`` and ``pg_ctl``;
``CARDMINT_TEST_PG_DSN`` points the tests at an existing server instead (the role needs
CREATEDB).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from cardmint.kernel import Kernel, KernelError
from cardmint.server.storage import Storage, open_storage
from hypothesis import HealthCheck, settings

VECTORS = Path(__file__).parent / "vectors"
BACKENDS = ("rust", "cython", "python")
REQUIRED = {b for b in os.environ.get("CARDMINT_REQUIRE_BACKENDS", "").split(",") if b}

settings.register_profile(
    "fast", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "slow", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


def _kernel(name: str) -> Kernel:
    try:
        return Kernel(name)
    except KernelError as e:
        if name in REQUIRED:
            pytest.fail(f"backend {name} is required here but unavailable: {e}")
        pytest.skip(f"backend {name} not built: {e}")


@pytest.fixture(params=BACKENDS, scope="session")
def kernel(request: pytest.FixtureRequest) -> Kernel:
    return _kernel(request.param)


@pytest.fixture(params=[b for b in BACKENDS if b != "python"], scope="session")
def native(request: pytest.FixtureRequest) -> Kernel:
    """Only the fast backends: for sizes the Python reference would take minutes on."""
    return _kernel(request.param)


@pytest.fixture(scope="session")
def reference() -> Kernel:
    return Kernel("python")


@pytest.fixture(scope="session")
def all_kernels() -> list[Kernel]:
    """Every available backend (the reference first), for agreement checks."""
    out = [Kernel("python")]
    for name in ("rust", "cython"):
        try:
            out.append(Kernel(name))
        except KernelError as e:
            if name in REQUIRED:
                pytest.fail(f"backend {name} is required here but unavailable: {e}")
    return out


def read_vectors(name: str) -> list[list[str]]:
    rows = []
    for line in (VECTORS / name).read_text().splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split("\t"))
    assert rows, f"{name} has no cases"
    return rows


@pytest.fixture(scope="session")
def vectors() -> Callable[[str], list[list[str]]]:
    return read_vectors


# -- storage: one PostgreSQL cluster per session, a database per test ----------------------

STORAGE_BACKENDS = ("sqlite", "postgres")


def _pg_bin() -> Path:
    override = os.environ.get("CARDMINT_PG_BIN")
    candidates = (
        [Path(override)] if override else sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    )
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    pytest.fail(
        "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin): "
        "install the Debian package `postgresql` (the Makefile's system-deps does) or set CARDMINT_TEST_PG_DSN"
    )


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """Where the test cluster listens; ``data_dir`` is None for an external server."""

    admin_dsn: str
    data_dir: Path | None
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def dsn_for(self, dbname: str) -> str:
        """A postgresql:// URL (what ``open_storage`` takes) for ``dbname`` on this server."""
        info = psycopg.conninfo.conninfo_to_dict(self.admin_dsn)
        user = quote(str(info.get("user", "postgres")), safe="")
        password = info.get("password")
        auth = f"{user}:{quote(str(password), safe='')}" if password else user
        host = str(info.get("host", "127.0.0.1"))
        port = str(info.get("port", "5432"))
        return f"postgresql://{auth}@{host}:{port}/{quote(dbname, safe='')}"

    def create_database(self) -> str:
        name = f"cardmint_test_{os.getpid()}_{next(self._ids)}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


# Clusters this process started, with how long initdb + start took: the terminal summary
# reports them, so a second cluster in one run shows up.
PG_CLUSTERS: list[tuple[Path, float]] = []
# Lines for the "storage figures" section of the terminal summary (rates, lot timings).
TIMINGS: list[str] = []
# "RELIABILITY <id> key=value ..." lines of tests/reliability, printed at the end of the run.
RELIABILITY: list[str] = []
# pytest-timeout's limit for one reliability test at --soak sizes (pyproject's 300 s otherwise).
SOAK_TIMEOUT_S = 1800


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="tests/reliability at their large sizes (CI runs the small ones)",
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("CARDMINT_TEST_PG_DSN")
    if external:
        yield PgServer(external, None)
        return
    bindir = _pg_bin()
    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="cardmint-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    root.chmod(0o700)
    log = root / "server.log"
    port = _free_port()
    try:
        subprocess.run(
            _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                          "--encoding=UTF8", "--locale=C", "--no-sync"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        # fsync off: a test cluster is thrown away, so durability would only cost time.
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start"]),
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        detail = log.read_text(errors="replace") if log.exists() else ""
        out = getattr(e, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start the test PostgreSQL: {e}\n{out.decode(errors='replace')}\n{detail}")
    PG_CLUSTERS.append((data, time.perf_counter() - t0))
    try:
        yield PgServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", data)
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            check=False, capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


class FakeClock:
    """A settable UTC clock shared by a test and the storage it opened."""

    def __init__(self) -> None:
        self._now = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, **kw: float) -> None:
        with self._lock:
            self._now += timedelta(**kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=STORAGE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database of the parametrized backend, as an ``open_storage`` URL."""
    if backend == "sqlite":
        yield f"sqlite://{tmp_path / 'cardmint.db'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = server.create_database()
    try:
        yield server.dsn_for(name)
    finally:
        server.drop_database(name)


@pytest.fixture
def opener(storage_url: str, clock: FakeClock) -> Iterator[Callable[[], Storage]]:
    """Opens (more) storage handles on the test's database; all are closed at teardown."""
    opened: list[Storage] = []

    def open_one() -> Storage:
        s = open_storage(storage_url, clock=clock)
        opened.append(s)
        return s

    yield open_one
    for s in opened:
        s.close()


@pytest.fixture
def storage(opener: Callable[[], Storage]) -> Storage:
    return opener()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist (the Makefile runs two workers): the reliability suite runs on one
    # worker, one test at a time, as it would alone (its concurrency is its own), while
    # the other worker takes the rest of the suite.
    # At --soak sizes a reliability test runs for minutes (the PostgreSQL card-to-card race:
    # 50,000 moves on two hot rows at ~120-180/s), past the suite's 300 s limit per test;
    # each of its phases still stops at Sizes.limit_s.
    soak = config.getoption("--soak")
    for item in items:
        if "tests/reliability/" in item.nodeid:
            item.add_marker(pytest.mark.xdist_group("reliability"))
            if soak and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(SOAK_TIMEOUT_S))


def pytest_sessionfinish(session: pytest.Session) -> None:
    # An xdist worker hands its summary lines to the controller (pytest_testnodedown).
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["cardmint_summary"] = {
            "reliability": list(RELIABILITY),
            "timings": list(TIMINGS),
            "clusters": [(str(path), seconds) for path, seconds in PG_CLUSTERS],
        }


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    summary = getattr(node, "workeroutput", {}).get("cardmint_summary")
    if summary:
        RELIABILITY.extend(summary["reliability"])
        TIMINGS.extend(summary["timings"])
        PG_CLUSTERS.extend((Path(path), seconds) for path, seconds in summary["clusters"])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RELIABILITY:
        terminalreporter.section("reliability")
        for line in RELIABILITY:
            terminalreporter.write_line(line)
    if TIMINGS:
        terminalreporter.section("storage figures")
        for line in TIMINGS:
            terminalreporter.write_line(line)
    if PG_CLUSTERS:
        took = ", ".join(f"{seconds:.1f} s" for _, seconds in PG_CLUSTERS)
        terminalreporter.write_line(
            f"PostgreSQL: {len(PG_CLUSTERS)} throwaway cluster(s) started this session (initdb + start: {took})"
        )
