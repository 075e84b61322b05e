"""``cardmint lot create|export`` against a real server, on SQLite and on PostgreSQL."""

from __future__ import annotations

import csv
import io
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from subprocess import CompletedProcess

import numpy as np
import pytest
from cardmint.cli import lot as lot_cli
from cardmint.cli.lot import HEADER, Progress, Row, write_codes
from cardmint.client import Client
from cardmint.server.app import Running
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cli_server.xlsx import read_sheets

Cli = Callable[..., CompletedProcess[str]]


def _ok(p: CompletedProcess[str]) -> str:
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    return p.stdout


@pytest.fixture
def product(cli: Cli) -> str:
    _ok(cli("product", "create", "--sku", "GC-100", "--name", "Gift card", "--currency", "CNY",
            "--denominations", "100,200", "--validity-days", "30"))  # fmt: skip
    return "GC-100"


def _codes_ok(server: Running, codes: list[str]) -> None:
    token = server.domain.auth.create_token("admin").token
    with Client(f"127.0.0.1:{server.port}", token) as c:
        assert {r.status for r in c.check(codes)} == {"ok"}


def test_lot_csv(cli: Cli, product: str, server: Running, tmp_path: Path) -> None:
    out = _ok(
        cli("lot", "create", "--product", product, "-n", "50", "--face-value", "200", "--out", "lot.csv")
    )
    assert "50 cards of 200.00 CNY (GC-100)" in out
    path = tmp_path / "work" / "lot.csv"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(path.parent.glob(".*.part"))
    rows = list(csv.reader(path.read_text().splitlines()))
    assert tuple(rows[0]) == HEADER
    body = rows[1:]
    assert len(body) == 50
    assert len({r[0] for r in body}) == 50
    assert len({r[1] for r in body}) == 50
    assert all(
        r[1].count("-") == 3 and r[2] == "200.00" and r[3] == "CNY" and r[4].endswith("Z") for r in body
    )
    _codes_ok(server, [r[1] for r in body])


def test_lot_xlsx_split_across_sheets(cli: Cli, product: str, server: Running, tmp_path: Path) -> None:
    # 10 cards, 4 rows a sheet including its header: 3 + 3 + 3 + 1.
    out = _ok(cli("lot", "create", "--product", product, "-n", "10", "--face-value", "100",
                  "--out", "lot.xlsx", "--xlsx-max-rows", "4"))  # fmt: skip
    assert "(4 sheets)" in out
    path = tmp_path / "work" / "lot.xlsx"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sheets = read_sheets(path)
    assert [name for name, _ in sheets] == ["codes", "codes 2", "codes 3", "codes 4"]
    assert [len(rows) for _, rows in sheets] == [4, 4, 4, 2]
    assert all(tuple(rows[0]) == HEADER for _, rows in sheets)
    body = [r for _, rows in sheets for r in rows[1:]]
    assert len({r[1] for r in body}) == 10
    assert all(Decimal(r[2]) == 100 and r[3] == "CNY" for r in body)
    _codes_ok(server, [r[1] for r in body])

    # An admin may export the lot again: the same serials and codes.
    lot_id = out.split(":")[0].removeprefix("lot ")
    _ok(cli("lot", "export", "--lot", lot_id, "--out", "again.csv"))
    again = list(csv.reader((tmp_path / "work" / "again.csv").read_text().splitlines()))[1:]
    assert [r[:2] for r in again] == [r[:2] for r in body]

    # The lot is listed, with its count, face value and that it was exported.
    listed = _ok(cli("lot", "list", "--product", product)).splitlines()
    assert [line.split(":")[0] for line in listed] == [f"lot {lot_id}"]
    assert "10 x 100.00 CNY, complete, serial prefix " in listed[0] and listed[0].endswith(", exported")


def test_lot_csv_expiry_is_the_lots(cli: Cli, product: str, server: Running, tmp_path: Path) -> None:
    """The expiry column is what the server recorded for the lot, not a guess from created_at."""
    out = _ok(cli("lot", "create", "--product", product, "-n", "3", "--face-value", "100", "--out", "e.csv"))
    lot_id = int(out.split(":")[0].removeprefix("lot "))
    token = server.domain.auth.create_token("admin").token
    with Client(f"127.0.0.1:{server.port}", token) as c:
        lot = c.get_lot(lot_id)
    want = datetime.fromtimestamp(lot.expires_at.seconds, UTC)
    assert lot.expires_at.ToDatetime(UTC) == lot.created_at.ToDatetime(UTC) + timedelta(days=30)
    rows = list(csv.reader((tmp_path / "work" / "e.csv").read_text().splitlines()))[1:]
    assert {r[4] for r in rows} == {want.strftime("%Y-%m-%dT%H:%M:%SZ")}
    # A product without an expiry leaves the column empty.
    _ok(cli("product", "create", "--sku", "GC-NOEXP", "--name", "No expiry", "--currency", "CNY",
            "--denominations", "100"))  # fmt: skip
    _ok(cli("lot", "create", "--product", "GC-NOEXP", "-n", "2", "--out", "n.csv"))
    rows = list(csv.reader((tmp_path / "work" / "n.csv").read_text().splitlines()))[1:]
    assert [r[4] for r in rows] == ["", ""]


def test_lot_refuses_to_overwrite(cli: Cli, product: str, tmp_path: Path) -> None:
    path = tmp_path / "work" / "lot.csv"
    path.write_text("keep me\n")
    p = cli("lot", "create", "--product", product, "-n", "5", "--face-value", "100", "--out", "lot.csv")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1
    assert "exists" in p.stderr
    assert path.read_text() == "keep me\n"


def test_lot_needs_face_value_when_ambiguous(cli: Cli, product: str, tmp_path: Path) -> None:
    p = cli("lot", "create", "--product", product, "-n", "5", "--out", "lot.csv")
    assert p.returncode == 2
    assert "--face-value" in p.stderr
    assert "100.00, 200.00" in p.stderr
    assert not list((tmp_path / "work").iterdir())


# -- the writers alone (no server) --------------------------------------------------------


def _rows(n: int) -> Iterator[Row]:
    for i in range(n):
        yield f"S{i:04d}", f"CODE-{i:04d}", Decimal("100.00"), "CNY", ""


@pytest.mark.parametrize(
    ("n", "cap", "sizes"),
    [(7, 4, [4, 4, 2]), (6, 4, [4, 4]), (3, 4, [4]), (0, 4, [1]), (5, 2, [2, 2, 2, 2, 2])],
)
def test_xlsx_sheet_split(tmp_path: Path, n: int, cap: int, sizes: list[int]) -> None:
    out = tmp_path / "x.xlsx"
    written, sheets = write_codes(out, _rows(n), max_rows=cap)
    assert (written, sheets) == (n, len(sizes))
    got = read_sheets(out)
    assert [len(rows) for _, rows in got] == sizes
    assert [r[1] for _, rows in got for r in rows[1:]] == [f"CODE-{i:04d}" for i in range(n)]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


_FIELD = st.text(alphabet=st.sampled_from('AZ09-,"\r\n é'), min_size=0, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.lists(st.tuples(_FIELD, _FIELD), max_size=5), max_size=4),
    width=st.integers(1, 8),
    face=st.sampled_from([Decimal("100.00"), Decimal("0.5")]),
    expiry=st.sampled_from(["", "2029-01-01T00:00:00Z", 'a,"b']),
)
def test_csv_from_arrays_is_what_csv_writer_writes(
    tmp_path_factory: pytest.TempPathFactory,
    chunks: list[list[tuple[str, str]]],
    width: int,
    face: Decimal,
    expiry: str,
) -> None:
    """The column-wise CSV (and its per-chunk fallback: fields to quote, strings shorter than
    their array's width, non-ASCII) is byte for byte the csv.writer file of the same rows."""
    tmp = tmp_path_factory.mktemp("csv")
    arrays = []
    for chunk in chunks:
        serials = np.array([s.encode() for s, _ in chunk] or [b"x" * width], dtype=np.bytes_)[: len(chunk)]
        codes = np.array([c.encode() for _, c in chunk] or [b"x"], dtype=np.bytes_)[: len(chunk)]
        arrays.append((serials, codes))
    # Full-width fixed arrays too, the common case, without anything to quote.
    fixed = np.array([f"{i:0{width}d}"[-width:].encode() for i in range(7)], dtype=f"S{width}")
    arrays.append((fixed, np.array([b"ABCD-EFGH"] * 7)))
    rows = [
        (s.decode(), c.decode(), face, "CNY", expiry)
        for serials, codes in arrays
        for s, c in zip(serials.tolist(), codes.tolist(), strict=True)
    ]
    want, got = tmp / "want.csv", tmp / "got.csv"
    with want.open("w", encoding="utf-8", newline="") as fh:
        assert lot_cli._write_csv(fh, rows) == len(rows)
    assert lot_cli._write_csv_chunks(got, arrays, face, "CNY", expiry) == len(rows)
    assert got.read_bytes() == want.read_bytes()


def test_excel_cap_counts_the_header() -> None:
    from cardmint.cli import lot

    assert lot.EXCEL_MAX_ROWS == 1_048_576


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def broken() -> Iterator[Row]:
        yield from _rows(3)
        raise RuntimeError("stream broke")

    for name in ("x.csv", "x.xlsx"):
        with pytest.raises(RuntimeError):
            write_codes(tmp_path / name, broken(), max_rows=4)
    assert list(tmp_path.iterdir()) == []


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    tty, pipe = _Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress("minting", stream)
        bar(0, 100, force=True)
        bar(100, 100)
        bar.finish()
    assert pipe.getvalue() == ""
    assert "\rminting [" in tty.getvalue()
    assert "100% 100/100" in tty.getvalue()
    assert tty.getvalue().endswith("\n")
