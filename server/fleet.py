"""Several server processes on one database: ``cardmint serve --processes N``.

A grpcio server answers from one process, and its Python (the servicers, the domain, the
group commit) runs one thread at a time under that process's GIL: one process uses about
one core, however many threads it has. N processes on one database use N cores. Every
rule that must hold across them already lives in the database (balances, attempt counts
and locks, idempotency keys, the pool's reservations, the audit chain's head), the digest
index follows lots other processes mint or void, and SQLite's writers queue on one gate
for the whole machine (storage/sqlite.py, ``_WriterGate``).

Process k listens on the configured port + k (each on a free port of its own with
``:0``), and serves metrics and health checks, when they are on, on those ports + k. Clients spread
their calls over the processes with gRPC's round_robin over the addresses
(``cardmint.client.Client("127.0.0.1:50051,127.0.0.1:50052", …)``) or through any TCP or
HTTP/2 balancer in front; a client that names one address reaches that process only.

The parent does what must happen once before any child starts (key files created,
schema migrated, so children never race to do either), spawns the children (spawn, not
fork: grpc's threads do not survive a fork) and watches them. SIGTERM or SIGINT drains
every child (each finishes its in-flight calls, as a single server does) and exits 0. A
child that dies brings the fleet down, exit 1, for the supervisor to restart whole; a
child whose parent dies drains and exits.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from cardmint.server.config import ServeConfig
from cardmint.server.observe import configure_logging

__all__ = ["Fleet", "addresses", "serve_fleet", "start_fleet"]

log = logging.getLogger("cardmint.server")

START_TIMEOUT = 120.0  # s for every child to report its ports (loading a large digest index)
_KILL_AFTER = 10.0  # s past the grace before a child that has not exited is killed


def _split(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:50051`` for IPv6, brackets kept) -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"an address is HOST:PORT, not {addr!r}")
    return host, int(port)


def addresses(listen: str, processes: int) -> list[str]:
    """Each process's address: ``host:port+k``, or ``host:0`` for every one with port 0."""
    host, port = _split(listen)
    if port and port + processes - 1 > 65535:
        raise ValueError(f"{processes} processes from {listen} run past port 65535")
    return [f"{host}:{port + k if port else 0}" for k in range(processes)]


def _child(values: dict[str, Any], sources: dict[str, str], file: str | None, k: int, conn: Any) -> None:
    """A spawned child's body: one server process (cardmint.server.app.serve_one), its
    ports sent up ``conn``; it drains on SIGTERM/SIGINT, on the parent's "stop" and when
    the parent is gone (the pipe's end)."""
    import signal
    import sys

    from cardmint.server.app import serve_one

    cfg = ServeConfig(values, sources, Path(file) if file is not None else None)
    configure_logging(cfg.log_format, cfg.log_level.upper(), sys.stderr)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    def watch_parent() -> None:
        try:
            conn.recv()  # "stop"
        except (EOFError, OSError):
            log.warning("the fleet's parent process is gone")
        stopping.set()

    threading.Thread(target=watch_parent, name="cardmint-fleet-parent", daemon=True).start()
    listen = addresses(cfg.listen, cfg.processes)[k]
    metrics = addresses(cfg.metrics, cfg.processes)[k] if cfg.metrics is not None else None
    health = addresses(cfg.health_listen, cfg.processes)[k] if cfg.health_listen is not None else None
    sys.exit(
        serve_one(
            cfg, listen, metrics, stopping, on_serving=lambda *ports: conn.send(ports), health_listen=health
        )
    )


@dataclass
class Fleet:
    """Spawned server processes, a pipe to each (a child sends its ports up once it
    serves, and stops on "stop" or at the pipe's end): pids, bound ports, metrics ports."""

    host: str
    processes: list[Any]  # multiprocessing.Process
    pipes: list[Any]
    ports: list[int] = field(default_factory=list)
    metrics_ports: list[int | None] = field(default_factory=list)

    @classmethod
    def spawn(cls, host: str, target: Callable[..., None], args: list[tuple[Any, ...]], name: str) -> Fleet:
        """One spawned process per ``args`` (not forked: grpc's threads do not survive a
        fork), each running ``target(*args, pipe)``."""
        ctx = multiprocessing.get_context("spawn")
        fleet = cls(host, [], [])
        for k, a in enumerate(args):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=target, args=(*a, theirs), name=f"{name}-{k}")
            proc.start()
            theirs.close()
            fleet.processes.append(proc)
            fleet.pipes.append(mine)
        return fleet

    def reports(self, timeout: float, stopping: threading.Event | None = None) -> list[Any]:
        """What each child sent up first (once it serves), waiting up to ``timeout`` s in
        all; RuntimeError when one exits first, or ``stopping`` is set meanwhile."""
        deadline = time.monotonic() + timeout
        sent = []
        for k, (proc, pipe) in enumerate(zip(self.processes, self.pipes, strict=True)):
            while not pipe.poll(0.2):
                if proc.exitcode is not None:
                    raise RuntimeError(f"server process {k} exited with {proc.exitcode} while starting")
                if stopping is not None and stopping.is_set():
                    raise RuntimeError("stopped while starting")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server process {k} did not start within {timeout:g} s")
            sent.append(pipe.recv())
        return sent

    @property
    def addresses(self) -> list[str]:
        return [f"{self.host}:{p}" for p in self.ports]

    @property
    def target(self) -> str:
        """What a client names to reach every process (``Client`` spreads calls over them)."""
        return ",".join(self.addresses)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def dead(self) -> list[int]:
        """Indexes of the children that have exited."""
        return [k for k, p in enumerate(self.processes) if p.exitcode is not None]

    def wait(self, timeout: float) -> None:
        """Until a child exits or ``timeout`` s pass."""
        wait([p.sentinel for p in self.processes], timeout)

    def stop(self, grace: float) -> list[int | None]:
        """Drain every child (up to ``grace`` s each, at once), kill one that overstays;
        their exit codes."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):  # that child is gone already
                pipe.send("stop")
        deadline = time.monotonic() + grace + _KILL_AFTER
        for p in self.processes:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.processes:
            if p.exitcode is None:
                log.error("server process %d did not stop within %g s; killing it", p.pid, grace)
                p.kill()
                p.join(_KILL_AFTER)
        for pipe in self.pipes:
            pipe.close()
        return [p.exitcode for p in self.processes]


def prepare(cfg: ServeConfig) -> None:
    """What must happen once, before any child: key files, the migrated schema."""
    from cardmint.server.app import open_domain
    from cardmint.server.domain import Keyring

    storage, _ = open_domain(
        cfg.db,
        cfg.var_dir,
        cfg.domain_config(),
        keyring=Keyring.load(cfg.keys_path),
        storage_options=cfg.storage_options(),
    )
    storage.close()


def start_fleet(cfg: ServeConfig, stopping: threading.Event | None = None) -> Fleet:
    """``cfg.processes`` server processes, each serving once this returns (RuntimeError
    and none left running when one fails to start, or ``stopping`` is set meanwhile)."""
    for listen in (
        cfg.listen,
        cfg.metrics,
        cfg.health_listen,
    ):  # a bad port range fails before anything starts
        if listen is not None:
            addresses(listen, cfg.processes)
    prepare(cfg)
    file = str(cfg.file) if cfg.file is not None else None
    fleet = Fleet.spawn(
        _split(cfg.listen)[0],
        _child,
        [(dict(cfg.values), dict(cfg.sources), file, k) for k in range(cfg.processes)],
        "cardmint-serve",
    )
    try:
        for port, metrics_port in fleet.reports(START_TIMEOUT, stopping):
            fleet.ports.append(port)
            fleet.metrics_ports.append(metrics_port)
    except BaseException:
        fleet.stop(cfg.grace)
        raise
    return fleet


def serve_fleet(cfg: ServeConfig, stopping: threading.Event) -> int:
    """``cardmint serve`` with ``processes`` > 1: until ``stopping`` (the caller's
    signal handlers set it), then drain; 0, or 1 when a child failed."""
    try:
        fleet = start_fleet(cfg, stopping)
    except RuntimeError as e:
        log.error("the fleet did not start: %s", e)
        return 1
    log.info(
        "%d server processes (pids %s); clients reach them all at %s",
        cfg.processes,
        ", ".join(map(str, fleet.pids)),
        fleet.target,
    )
    failed = False
    while not stopping.is_set():
        fleet.wait(0.5)  # wakes up so the main thread can run signal handlers
        dead = fleet.dead()
        if dead:
            k = dead[0]
            log.error(
                "server process %d (pid %d) exited with %s; stopping the fleet",
                k,
                fleet.pids[k],
                fleet.processes[k].exitcode,
            )
            failed = True
            break
    log.info("stopping %d server processes; draining for up to %g s", cfg.processes, cfg.grace)
    codes = fleet.stop(cfg.grace)
    log.info("stopped (exit codes %s)", codes)
    return 1 if failed or any(c != 0 for c in codes) else 0
