"""Item 11 of issue 5: hostile input on every gRPC method, on SQLite and PostgreSQL.

Every method of every cardmint service, enumerated from the proto descriptors (a new method
is covered without touching this file), is called with an admin token and:

* ``random``: random bytes as the request;
* ``mutated``: a plausible request (real serial, sku, lot, order; a fresh request id) with
  one field replaced by an edge value: 0, -1, 2^63-1 and -2^63 (and the 32-bit and unsigned
  edges), empty and 1 MiB strings and bytes, NUL and bidi controls, unknown enum values,
  empty sub-messages, and huge repeated fields;
* ``wire``: hand-made wire bytes: invalid UTF-8 in each string field, each field with the
  wrong wire type, unknown fields of every wire type, truncated messages, lengths past the
  end, unbalanced and 200-deep groups, varints of 11 bytes;
* ``oversize``: a message above the server's maximum receive size;
* ``metadata``: a 1 MiB and a 12 KiB authorization header, binary metadata, 400 keys,
  hostile ``x-request-id`` / ``x-device-id`` / ``x-challenge-passed`` values.

Promises checked: no call ends ``UNKNOWN`` or ``INTERNAL`` (a handler that raised: the
server's fault, never the answer to input); every ``INVALID_ARGUMENT`` carries
``BadRequest`` field violations; no undeclared enum value is accepted; the server keeps
answering (health and a normal call after every category: an in-process server that
crashed would take this test with it); and a call that was refused changed nothing: every
table is dumped after every call, and a refused call's dump must equal the one before it,
row for row (the dump is skipped only when the database proves nothing was committed
since the last one: SQLite's ``data_version``, PostgreSQL's WAL insert position). Calls
that succeed (the admin may legitimately create a product with an odd
but valid name) are counted and their changes become the new baseline, so every refusal
is compared with the state just before it. A refused code guess (BindCard, BulkBind) may
leave exactly what the brute-force limits need (docs/RELIABILITY.md, "Limits"): its
attempt counters, the staff-named account they count against (created on first use) and a
``*.locked`` event when a limit is reached; nothing else.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from cardmint.client import Client
from cardmint.server.api import SERVICE_NAMES
from cardmint.server.app import MAX_MESSAGE_BYTES, Running, start
from cardmint.server.domain import DomainConfig
from cardmint.server.domain.events import EventKind
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tests.grpc_helpers import Metadata, failed_call

from .conftest import Report, Sizes
from .test_races import _lot

FD = FieldDescriptor
MIB = 1 << 20
# Methods that look a code up: a refused guess is counted against the card, the account
# and the address (docs/RELIABILITY.md, "Limits"), the one trace a refusal may leave: the
# counters, the (staff-named) account they are counted against, created on first use, and
# the lockout event when a count reaches its limit.
GUESS_METHODS = {"cardmint.v1.CardService/BindCard", "cardmint.v1.AccountService/BulkBind"}
LOCK_EVENTS = tuple(k.value.encode() for k in EventKind if k.value.endswith(".locked"))


def _rows(dump: bytes) -> Counter[bytes]:
    return Counter(r for r in dump.split(b"\n") if r)


def _diff(before: bytes, after: bytes) -> str:
    """The rows that went away and came in, shortened, for a failure message."""
    old, new = _rows(before), _rows(after)
    gone = [r[:160] for r in (old - new).elements()][:3]
    came = [r[:160] for r in (new - old).elements()][:3]
    return f"-{gone} +{came}"


def _guess_trace(table: str, before: bytes, after: bytes) -> bool:
    """Whether ``before`` -> ``after`` of ``table`` is what a counted guess may leave."""
    if table == "attempt_counters":
        return True
    old, new = _rows(before), _rows(after)
    if old - new:  # a row changed or went away
        return False
    added = list((new - old).elements())
    if table == "accounts":
        return len(added) == 1
    if table == "events":
        return all(any(k in row for k in LOCK_EVENTS) for row in added)
    return False


# A response stream silent this long is cancelled by the caller (Subscribe never ends).
IDLE_S = 0.5


@pytest.fixture
def server(storage_url: str, tmp_path: Path) -> Iterator[Running]:
    # No order sweeper, no housekeeping, one health probe (at start): nothing may write to
    # the database but the calls under test.
    config = DomainConfig(order_sweep_seconds=0, housekeeping_seconds=0)
    running = start(
        storage_url, "127.0.0.1:0", tmp_path / "var", workers=16, config=config, health_probe_seconds=0
    )
    try:
        yield running
    finally:
        running.stop(grace=0)


# -- the methods, from the descriptors -------------------------------------------------------


def _methods() -> list[MethodDescriptor]:
    pool = descriptor_pool.Default()
    return [m for name in SERVICE_NAMES for m in pool.FindServiceByName(name).methods]


def _path(m: MethodDescriptor) -> str:
    return f"/{m.containing_service.full_name}/{m.name}"


def _cls(m: MethodDescriptor) -> Any:
    return message_factory.GetMessageClass(m.input_type)


# -- wire format by hand ---------------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _len_field(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


_LEN_TYPES = {FD.TYPE_STRING, FD.TYPE_BYTES, FD.TYPE_MESSAGE}


def _wire_cases(desc: Any, soak: bool = False) -> Iterator[tuple[str, bytes]]:
    """Hand-made request bytes for message type ``desc``: (what, bytes)."""
    # Not UTF-8: a stray byte, a cut sequence, a surrogate, an overlong form, past U+10FFFF.
    bad_utf8 = (b"\xff\xfe", b"ok\xc3(", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80")
    for f in desc.fields:
        if f.type == FD.TYPE_STRING:
            for bad in bad_utf8 if soak else bad_utf8[::2]:
                yield f"bad-utf8:{f.name}", _len_field(f.number, bad)
        if f.type == FD.TYPE_MESSAGE:
            for sub in f.message_type.fields:
                if sub.type == FD.TYPE_STRING:
                    yield (
                        f"bad-utf8:{f.name}.{sub.name}",
                        _len_field(f.number, _len_field(sub.number, b"\xff")),
                    )
        # The wrong wire type for the field's type.
        if f.type in _LEN_TYPES:
            yield f"wire-type:{f.name}", _tag(f.number, 0) + _varint(7)
            yield f"wire-type:{f.name}", _tag(f.number, 5) + b"\x01\x02\x03\x04"
        else:
            yield f"wire-type:{f.name}", _len_field(f.number, b"\x01\x02\x03")
            yield f"wire-type:{f.name}", _tag(f.number, 1) + b"\xff" * 8
        # Lengths that run past the end; a length of 2^32.
        for past in (1000, 1 << 32) if soak else (1000,):
            yield f"overrun:{f.name}", _tag(f.number, 2) + _varint(past) + b"abc"
    yield (
        "unknown-fields",
        b"".join(
            (
                _tag(1000, 0) + _varint(2**64 - 1),
                _tag(1001, 1) + b"\x00" * 8,
                _len_field(1002, b"x" * 100),
                _tag(1003, 5) + b"\x00" * 4,
                _tag(1004, 3) + _tag(1005, 0) + b"\x01" + _tag(1004, 4),
            )
        ),
    )
    yield "unknown-field-max-number", _tag((1 << 29) - 1, 0) + b"\x01"
    yield "field-number-zero", _tag(0, 0) + b"\x01"
    yield "unbalanced-group", _tag(1006, 3) + _tag(1007, 0) + b"\x01"
    yield "end-group-alone", _tag(1006, 4)
    yield "deep-groups", _tag(1008, 3) * 200 + _tag(1008, 4) * 200
    yield "varint-11-bytes", _tag(1009, 0) + b"\xff" * 10 + b"\x01"
    yield "truncated-tag", b"\x80"
    yield "wire-type-6", _tag(1, 6) + b"\x00"
    yield "wire-type-7", _tag(1, 7) + b"\x00"


# -- mutated messages ------------------------------------------------------------------------

_INT_EDGES = {
    FD.TYPE_INT64: (0, -1, 2**63 - 1, -(2**63)),
    FD.TYPE_SINT64: (0, -1, 2**63 - 1, -(2**63)),
    FD.TYPE_SFIXED64: (0, -1, 2**63 - 1, -(2**63)),
    FD.TYPE_INT32: (0, -1, 2**31 - 1, -(2**31)),
    FD.TYPE_SINT32: (0, -1, 2**31 - 1, -(2**31)),
    FD.TYPE_SFIXED32: (0, -1, 2**31 - 1, -(2**31)),
    FD.TYPE_UINT64: (0, 1, 2**63, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 1, 2**63, 2**64 - 1),
    FD.TYPE_UINT32: (0, 1, 2**31, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 1, 2**31, 2**32 - 1),
}
_STRINGS = ("", "A" * MIB, "\x00", "\u202eevil\u200b", "A" * 1025, "ＡＢＣ①", "💳" * 300)
_BYTES = (b"", b"\x00" * MIB, b"\xff" * 64)


def _values(f: Any, soak: bool) -> Iterator[tuple[str, Any]]:
    """Edge values for one (non-repeated) field."""
    if f.type in _INT_EDGES:
        for n in _INT_EDGES[f.type]:
            yield str(n), n
    elif f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        for x in (float("nan"), float("inf"), -0.0, 1e308):
            yield str(x), x
    elif f.type == FD.TYPE_BOOL:
        yield "true", True
    elif f.type == FD.TYPE_STRING:
        for s in _STRINGS:
            yield (f"str{len(s)}", s)
    elif f.type == FD.TYPE_BYTES:
        for b in _BYTES:
            yield (f"bytes{len(b)}", b)
    elif f.type == FD.TYPE_ENUM:
        top = max(v.number for v in f.enum_type.values)
        for v in (top + 1, 2**31 - 1, -1):
            yield f"enum{v}", v


@dataclass
class World:
    """Real things for the plausible base of a mutated request."""

    sku: str
    serial: str
    code: str
    lot_id: int
    order_id: int
    account: str


def _base(cls: Any, world: World) -> Any:
    """A plausible request: the fields named like something real point at it."""
    msg = cls()
    names = {f.name: f for f in cls.DESCRIPTOR.fields}
    plain = {
        "sku": world.sku,
        "serial": world.serial,
        "code": world.code,
        "account": world.account,
        "currency": "CNY",
        "lot_id": world.lot_id,
        "order_id": world.order_id,
    }
    for name, value in plain.items():
        f = names.get(name)
        if f is not None and not f.is_repeated and f.containing_oneof is None:
            want = FD.TYPE_STRING if isinstance(value, str) else None
            if (want is None and f.type in _INT_EDGES) or f.type == want:
                setattr(msg, name, value)
    if "request_id" in names:
        msg.request_id = uuid.uuid4().hex
    if "payment_id" in names:
        msg.payment_id = uuid.uuid4().hex
    return msg


def _mutations(cls: Any, world: World, soak: bool) -> Iterator[tuple[str, bytes]]:
    """(what, bytes) for one-field edits of the plausible base, one level into sub-messages."""
    huge = 1_000_000 if soak else 200_000

    def edits(desc: Any, prefix: str, depth: int) -> Iterator[tuple[str, Callable[[Any], None]]]:
        for f in desc.fields:
            name = f"{prefix}{f.name}"
            if f.is_repeated:
                if f.type == FD.TYPE_MESSAGE:
                    n = huge // 20

                    def fill(m: Any, f: Any = f, n: int = n) -> None:
                        getattr(m, f.name).extend([message_factory.GetMessageClass(f.message_type)()] * n)

                    yield f"{name}[x{n}]", fill
                else:
                    sample = next(_values(f, soak), ("", None))[1]
                    if f.type in _INT_EDGES:
                        sample = _INT_EDGES[f.type][2]

                    def fill_scalar(m: Any, f: Any = f, v: Any = sample) -> None:
                        getattr(m, f.name).extend([v] * huge)

                    yield f"{name}[x{huge}]", fill_scalar
                continue
            if f.type == FD.TYPE_MESSAGE:

                def empty(m: Any, f: Any = f) -> None:
                    getattr(m, f.name).SetInParent()

                yield f"{name}={{}}", empty
                if depth < 1:
                    for what, sub_edit in edits(f.message_type, f"{name}.", depth + 1):

                        def nested(m: Any, f: Any = f, e: Callable[[Any], None] = sub_edit) -> None:
                            e(getattr(m, f.name))

                        yield what, nested
                continue
            for label, value in _values(f, soak):

                def put(m: Any, f: Any = f, v: Any = value) -> None:
                    setattr(m, f.name, v)

                yield f"{name}={label}", put

    for what, edit in edits(cls.DESCRIPTOR, "", 0):
        msg = _base(cls, world)
        edit(msg)
        yield what, msg.SerializeToString()


# -- calling and judging -----------------------------------------------------------------------


def _violations(err: grpc.RpcError) -> int:
    status = rpc_status.from_call(failed_call(err))
    if status is None:
        return 0
    count = 0
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            count += len(bad.field_violations)
    return count


@dataclass
class Outcome:
    code: grpc.StatusCode
    violations: int = 0
    error: grpc.RpcError | None = None


def _call(
    channel: grpc.Channel,
    m: MethodDescriptor,
    payload: bytes,
    metadata: Metadata,
    timeout: float,
) -> Outcome:
    """One call with raw request bytes; a server stream is read to its end, for at most
    ``timeout`` (Subscribe never ends by itself: cancelled, counted as CANCELLED)."""
    path = _path(m)
    try:
        if m.client_streaming and m.server_streaming:
            call = channel.stream_stream(path, None, None)(
                iter([payload]), metadata=metadata, timeout=timeout
            )
            _drain(call, timeout)
        elif m.server_streaming:
            call = channel.unary_stream(path, None, None)(payload, metadata=metadata, timeout=timeout)
            _drain(call, timeout)
        elif m.client_streaming:
            channel.stream_unary(path, None, None)(iter([payload]), metadata=metadata, timeout=timeout)
        else:
            channel.unary_unary(path, None, None)(payload, metadata=metadata, timeout=timeout)
    except grpc.RpcError as e:
        code = e.code()
        return Outcome(code, _violations(e) if code == grpc.StatusCode.INVALID_ARGUMENT else 0, e)
    return Outcome(grpc.StatusCode.OK)


def _drain(call: Any, timeout: float) -> None:
    """Read a response stream to its end; cancel it when it stays silent for ``IDLE_S``
    (Subscribe waits for new events forever) or runs past ``timeout``."""
    stop = time.monotonic() + timeout
    last = [time.monotonic()]
    cancelled = threading.Event()

    def watch() -> None:
        while not call.done() and not cancelled.is_set():
            now = time.monotonic()
            if now - last[0] > IDLE_S or now > stop:
                cancelled.set()
                call.cancel()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for _ in call:
            last[0] = time.monotonic()
    finally:
        watcher.join(timeout=IDLE_S + timeout)


# -- database dumps ------------------------------------------------------------------------------


class Dumper:
    """Every table's rows, as text, in a stable order: one dict per snapshot.

    ``dump`` re-reads the tables only when something may have been committed since the
    previous dump, judged by the database itself: SQLite's ``PRAGMA data_version`` changes
    when another connection commits; PostgreSQL's WAL insert position moves with every
    logged change (cardmint has no unlogged tables), and also with others (autovacuum),
    which only costs a real dump. Nearly every hostile call is refused before any write,
    and a full dump per call made this test the slowest of the suite on PostgreSQL."""

    def __init__(self, storage_url: str) -> None:
        self.url = storage_url
        self.pg: psycopg.Connection[Any] | None = None
        self.lite: sqlite3.Connection | None = None
        if storage_url.startswith("postgresql://"):
            self.pg = psycopg.connect(storage_url, autocommit=True)
            rows = self.pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
            self.tables = sorted(r[0] for r in rows)
        else:
            path = storage_url.removeprefix("sqlite://")
            self.lite = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            rows = self.lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            self.tables = sorted(r[0] for r in rows)

        self._marker: object = None
        self._last: dict[str, bytes] = {}
        self.skipped = 0  # dumps the marker proved unneeded

    def marker(self) -> object:
        """What changes whenever a change may have been committed since it was last read."""
        if self.pg is not None:
            return self.pg.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert self.lite is not None
        return self.lite.execute("PRAGMA data_version").fetchone()

    def dump(self) -> dict[str, bytes]:
        marker = self.marker()  # read before the tables: a commit after it is seen next time
        if marker == self._marker:
            self.skipped += 1
            return self._last
        self._marker, self._last = marker, self._read()
        return self._last

    def _read(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        if self.pg is not None:
            for t in self.tables:
                buf = bytearray()
                with self.pg.cursor().copy(f'COPY "{t}" TO STDOUT') as copy:
                    for block in copy:
                        buf += block
                out[t] = b"\n".join(sorted(bytes(buf).split(b"\n")))
        else:
            assert self.lite is not None
            for t in self.tables:
                rows = self.lite.execute(f'SELECT * FROM "{t}"').fetchall()
                out[t] = "\n".join(sorted(repr(r) for r in rows)).encode()
        return out

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()
        if self.lite is not None:
            self.lite.close()


# -- the test -----------------------------------------------------------------------------------


def _metadata_cases(bearer: str, rng: random.Random) -> Iterator[tuple[str, Metadata]]:
    auth = ("authorization", f"Bearer {bearer}")
    yield "auth-1MiB", (("authorization", "Bearer " + "A" * MIB),)
    yield "auth-12KiB", (("authorization", "Bearer " + "A" * 12_000),)
    yield "auth-garbage", (("authorization", "Bearer ';DROP TABLE tokens;--\"<>%00%ff"),)
    yield "auth-basic", (("authorization", "Basic YWRtaW46YWRtaW4="),)
    yield "auth-twice", (auth, ("authorization", "Bearer nope"))
    yield "binary", (auth, ("x-junk-bin", bytes(rng.getrandbits(8) for _ in range(4096))))
    yield "binary-auth", (("authorization-bin", b"\xff\x00" * 64),)
    yield "many-keys", (auth, *((f"x-k{i}", "v" * 20) for i in range(400)))
    yield "request-id", (auth, ("x-request-id", "%00%0a" * 10 + "x" * 5000))
    yield "device-id", (auth, ("x-device-id", "d" * 4000))
    yield "challenge", (auth, ("x-challenge-passed", "maybe" * 100))


def test_hostile_input_on_every_method(
    server: Running, storage_url: str, sizes: Sizes, seed: int, report: Report
) -> None:
    rng = random.Random(seed)
    addr = f"127.0.0.1:{server.port}"
    bearer = server.domain.auth.create_token("admin").token
    admin = Client(addr, bearer, timeout=30.0)
    [(serial, code), _] = _lot(admin, f"HOSTILE{seed % 1000}", 500, 2)
    sku = f"HOSTILE{seed % 1000}"
    lot_id = next(iter(admin.list_lots(sku=sku))).id
    admin.create_product(sku=f"{sku}P", name="pool", currency="CNY", denominations=[100])
    admin.stock_pool(admin.create_lot(f"{sku}P", 4, 100).id)
    order = admin.create_order([(f"{sku}P", 100, 1)], account="hostile-buyer")
    world = World(sku, serial, code, lot_id, order.id, "hostile-buyer")

    opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channel = grpc.insecure_channel(addr, options=opts)
    health = health_pb2_grpc.HealthStub(channel)
    auth: Metadata = (("authorization", f"Bearer {bearer}"),)
    methods = _methods()
    dumper = Dumper(storage_url)
    last = dumper.dump()
    # The dumper must see a commit made through the server (else every comparison below
    # would compare a stale dump with itself).
    admin.create_product(sku=f"{sku}D", name="seen by the dumper", currency="CNY", denominations=[100])
    seen = dumper.dump()
    assert seen["products"] != last["products"], "the dumper missed a commit"
    last = seen
    per_method_random = 40 if sizes.soak else 6
    oversize_methods = methods if sizes.soak else methods[:: max(1, len(methods) // 6)]
    sent: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    accepted: Counter[str] = Counter()
    guesses_counted = 0
    started = time.perf_counter()
    phase = [started]  # each category gets sizes.limit_s

    def judge(category: str, m: MethodDescriptor, what: str, out: Outcome) -> None:
        nonlocal last, guesses_counted
        sent[category] += 1
        statuses[out.code.name] += 1
        where = f"{category} {m.containing_service.name}/{m.name} {what}"
        if out.code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
            # INTERNAL is the server's own fault (a handler raised): never the answer to input.
            problems.append(f"{out.code.name}: {where}: {out.error}")
        if out.code == grpc.StatusCode.OK and "=enum" in what:  # every enum edge is undeclared
            problems.append(f"an undeclared enum value was accepted: {where}")
        if out.code == grpc.StatusCode.INVALID_ARGUMENT and out.violations == 0:
            problems.append(f"INVALID_ARGUMENT without field violations: {where}: {out.error}")
        now = dumper.dump()
        if out.code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            # Accepted (or a stream we ended): its changes are the new baseline.
            accepted[m.name] += 1
        else:
            changed = sorted(t for t in now if now[t] != last.get(t))
            guess = f"{m.containing_service.full_name}/{m.name}" in GUESS_METHODS
            if guess and changed and all(_guess_trace(t, last[t], now[t]) for t in changed):
                guesses_counted += 1
            elif changed:
                diff = {t: _diff(last[t], now[t]) for t in changed}
                problems.append(f"refused ({out.code.name}) but changed {changed}: {where}: {diff}")
        last = now

    def alive(after: str) -> None:
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, after
        assert admin.get_product(sku).sku == sku, after
        phase[0] = time.perf_counter()

    def in_time() -> None:
        if time.perf_counter() > phase[0] + sizes.limit_s:
            pytest.fail(f"a category still running after {sizes.limit_s:.0f} s; sent {dict(sent)}")

    def run(category: str, cases: Callable[[MethodDescriptor], Iterator[tuple[str, bytes]]]) -> None:
        for m in methods:
            in_time()
            for what, payload in cases(m):
                judge(category, m, what, _call(channel, m, payload, auth, 10.0))
        alive(category)

    def random_bytes(m: MethodDescriptor) -> Iterator[tuple[str, bytes]]:
        for i in range(per_method_random):
            size = rng.choice((0, 1, 2, 7, 64, 300, 4096))
            yield f"#{i}:{size}", rng.randbytes(size)

    try:
        run("random", random_bytes)
        run("mutated", lambda m: _mutations(_cls(m), world, sizes.soak))
        run("wire", lambda m: _wire_cases(m.input_type, sizes.soak))
        big = b"\x0a" + _varint(MAX_MESSAGE_BYTES + 1) + b"\x00" * (MAX_MESSAGE_BYTES + 1)
        for m in oversize_methods:
            in_time()
            judge("oversize", m, f"{len(big)} bytes", _call(channel, m, big, auth, 60.0))
        alive("oversize")
        meta_methods = methods if sizes.soak else methods[:: max(1, len(methods) // 12)]
        for m in meta_methods:
            in_time()
            for what, md in _metadata_cases(bearer, rng):
                judge(
                    "metadata",
                    m,
                    what,
                    _call(channel, m, _base(_cls(m), world).SerializeToString(), md, 10.0),
                )
        alive("metadata")

        elapsed = time.perf_counter() - started
    finally:
        dumper.close()
        channel.close()
        admin.close()
    report(
        "11-hostile-grpc",
        methods=len(methods),
        sent="/".join(f"{k}:{v}" for k, v in sent.items()),
        statuses="/".join(f"{k}:{v}" for k, v in sorted(statuses.items())),
        unknown=statuses["UNKNOWN"],
        accepted=sum(accepted.values()),
        refused_changed_db=sum("changed" in p for p in problems),
        invalid_without_violations=sum(p.startswith("INVALID_ARGUMENT") for p in problems),
        guesses_counted=guesses_counted,
        server_alive=1,
        dumps_skipped=dumper.skipped,
        calls_per_s=round(sum(sent.values()) / elapsed),
    )
    assert problems == [], "\n".join(problems[:40])
    assert statuses["UNKNOWN"] == 0


def test_hostile_descriptor_walk_is_complete() -> None:
    """The enumeration covers every served method: a method added to a .proto is fuzzed."""
    served = {f"/{svc}/" for svc in SERVICE_NAMES}
    methods = _methods()
    assert {(_path(m).rsplit("/", 1)[0] + "/") for m in methods} == served
    assert len(methods) == sum(
        len(descriptor_pool.Default().FindServiceByName(s).methods) for s in SERVICE_NAMES
    )
    # Every method gets wire cases and mutations, whatever its fields.
    world = World("S", "1", "C", 1, 1, "a")
    for m in methods:
        assert list(_wire_cases(m.input_type)), _path(m)
        assert all(isinstance(p, bytes) for _, p in _mutations(_cls(m), world, False)), _path(m)
