"""``cardmint lot create|export``: mint a lot through the server and keep its codes.

    cardmint lot create --product GC-100 -n 1000 --out lot.csv [--face-value 100]
    cardmint lot export --lot 3 --out lot.xlsx          # a later export: admin only, audited

The server hands out the plaintext codes of a lot (every export is audited, and only an
admin may repeat one), so the file is the thing to protect: it is created 0600 under a
temporary name next to the target and renamed only once complete — a file named ``--out``
is always whole. An existing ``--out`` is refused unless ``--force``.

Columns: serial, code (display form, XXXX-XXXX-...), face value (major unit), currency,
expiry (UTC, as the server recorded it for the lot; empty when its cards never expire).
``.csv`` is plain CSV, assembled from the export's arrays a chunk at a time; ``.xlsx`` is
written by xlsxwriter in constant_memory mode, a new sheet whenever one reaches Excel's
1,048,576 rows (its header row included).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import _remote

if TYPE_CHECKING:  # numpy is imported when an export runs: the parser is built for every command
    import numpy as np
    import numpy.typing as npt
    from cardmint.client import Client
    from cardmint.v1 import lot_pb2

EXCEL_MAX_ROWS = 1_048_576
HEADER = ("serial", "code", "face value", "currency", "expiry")
Row = tuple[str, str, Decimal, str, str]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lot = sub.add_parser("lot", help="mint lots of cards and export their codes (through the server)")
    lsub = lot.add_subparsers(dest="lot_action", required=True, metavar="LOT_ACTION")

    create = lsub.add_parser("create", help="mint a lot and write its codes to a CSV or XLSX file")
    create.add_argument("--product", required=True, metavar="SKU", help="the product's SKU")
    create.add_argument("-n", "--count", type=int, required=True, help="how many cards")
    create.add_argument(
        "--face-value", help="value of each card (major unit); default: the product's only denomination"
    )
    _output_options(create)

    export = lsub.add_parser("export", help="write the codes of an existing lot again (admin only)")
    export.add_argument("--lot", type=int, required=True, help="the lot id")
    _output_options(export)

    listing = lsub.add_parser("list", help="the lots this token may see, oldest first")
    listing.add_argument("--product", default="", metavar="SKU", help="only this product's lots")
    _remote.add_common(listing)


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output file: .csv or .xlsx")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    # Tests split sheets with a small cap instead of writing a million rows.
    p.add_argument("--xlsx-max-rows", type=int, default=EXCEL_MAX_ROWS, help=argparse.SUPPRESS)
    _remote.add_common(p)


# -- writers --------------------------------------------------------------------------------


class Progress:
    """A one-line bar on stderr, only when stderr is a terminal; redrawn at most 10x/s."""

    def __init__(self, label: str, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self._last = 0.0

    def __call__(self, done: int, total: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1 and done < total:
            return
        self._last = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r{self.label} [{bar:<30}] {frac:4.0%} {done:,}/{total:,}")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _write_csv(fh: IO[str], rows: Iterable[Row]) -> int:
    w = csv.writer(fh, lineterminator="\n")
    w.writerow(HEADER)
    n = 0
    for serial, code, face, cur, expiry in rows:
        w.writerow((serial, code, str(face), cur, expiry))
        n += 1
    return n


def _write_xlsx(path: Path, rows: Iterable[Row], max_rows: int) -> tuple[int, int]:
    """Rows across as many sheets as needed, each at most ``max_rows`` rows incl. its header.
    Returns (rows, sheets)."""
    import xlsxwriter  # type: ignore[import-untyped]

    if max_rows < 2:
        raise ValueError("a sheet needs room for its header and one row")
    # constant_memory: rows go to temporary files as written (0600, beside the output).
    wb = xlsxwriter.Workbook(str(path), {"constant_memory": True, "tmpdir": str(path.parent)})
    try:
        money = wb.add_format({"num_format": "0.00"})
        sheets = 0
        ws: Any = None
        r = max_rows  # forces a first sheet
        n = 0
        for serial, code, face, cur, expiry in rows:
            if r >= max_rows:
                sheets += 1
                ws = wb.add_worksheet("codes" if sheets == 1 else f"codes {sheets}")
                ws.set_column(0, 0, 18)
                ws.set_column(1, 1, 24)
                ws.write_row(0, 0, HEADER)
                r = 1
            ws.write_string(r, 0, serial)
            ws.write_string(r, 1, code)
            ws.write_number(r, 2, float(face), money)
            ws.write_string(r, 3, cur)
            ws.write_string(r, 4, expiry)
            r += 1
            n += 1
        if sheets == 0:
            wb.add_worksheet("codes").write_row(0, 0, HEADER)
            sheets = 1
    finally:
        wb.close()
    return n, sheets


def write_codes(out: Path, rows: Iterable[Row], *, max_rows: int = EXCEL_MAX_ROWS) -> tuple[int, int]:
    """Write ``rows`` to ``out`` (by suffix) atomically, mode 0600. Returns (rows, sheets)."""
    with staged(out) as tmp:
        return write_staged(tmp, out, rows, max_rows=max_rows)


def output_kind(out: Path) -> str:
    from . import UsageError

    kind = out.suffix.lower().lstrip(".")
    if kind not in ("csv", "xlsx"):
        raise UsageError(f"--out must end in .csv or .xlsx, got {out.name!r}")
    return kind


def write_staged(tmp: Path, out: Path, rows: Iterable[Row], *, max_rows: int) -> tuple[int, int]:
    if output_kind(out) == "xlsx":
        return _write_xlsx(tmp, rows, max_rows)
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        n = _write_csv(fh, rows)
        fh.flush()
        os.fsync(fh.fileno())
    return n, 1


@contextlib.contextmanager
def staged(out: Path, *, force: bool = True) -> Iterator[Path]:
    """A fresh 0600 file beside ``out``; renamed to ``out`` if the block succeeds, else removed."""
    from . import UsageError

    output_kind(out)
    if out.exists() and not force:
        raise UsageError(f"{out} exists (--force replaces it)")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o600)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# -- commands -------------------------------------------------------------------------------


def _expiry(lot: lot_pb2.Lot) -> str:
    """The lot's expiry as the server recorded it at creation; "" when its cards never expire."""
    if not lot.HasField("expires_at"):
        return ""
    return datetime.fromtimestamp(lot.expires_at.seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Chunk = tuple["npt.NDArray[np.bytes_]", "npt.NDArray[np.bytes_]"]


def _csv_tail(face: Decimal, cur: str, expiry: str) -> bytes:
    """What follows serial and code on every row, exactly as ``csv.writer`` writes it."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(("s", "c", str(face), cur, expiry))
    return buf.getvalue().removeprefix("s,c").encode("utf-8")


def _csv_block(serials: npt.NDArray[np.bytes_], codes: npt.NDArray[np.bytes_], tail: bytes) -> bytes | None:
    """One chunk's rows as CSV, assembled column-wise in one buffer (a Python row per card
    is most of the time of writing 10^6 of them). None when a field would need quoting or a
    string is shorter than its array's width: then ``csv.writer`` writes the chunk."""
    import numpy as np

    n, sw, cw = len(serials), serials.dtype.itemsize, codes.dtype.itemsize
    if n == 0:
        return b""
    s_raw = np.ascontiguousarray(serials).view(np.uint8).reshape(n, sw)
    c_raw = np.ascontiguousarray(codes).view(np.uint8).reshape(n, cw)
    if not (s_raw[:, -1].all() and c_raw[:, -1].all()):
        return None
    quoted = np.frombuffer(_CSV_QUOTED, dtype=np.uint8)
    if np.isin(s_raw, quoted).any() or np.isin(c_raw, quoted).any():
        return None
    line = np.empty((n, sw + 1 + cw + len(tail)), dtype=np.uint8)
    line[:, :sw] = s_raw
    line[:, sw] = ord(",")
    line[:, sw + 1 : sw + 1 + cw] = c_raw
    line[:, sw + 1 + cw :] = np.frombuffer(tail, dtype=np.uint8)
    return line.tobytes()


# Bytes that make csv.writer quote a field (delimiter, quote, line breaks).
_CSV_QUOTED = b',"\r\n'


def _write_csv_chunks(path: Path, chunks: Iterable[Chunk], face: Decimal, cur: str, expiry: str) -> int:
    """The same file as ``_write_csv`` on the same rows, from the export's arrays."""
    tail = _csv_tail(face, cur, expiry)
    n = 0
    with path.open("wb") as fh:
        head = io.StringIO()
        csv.writer(head, lineterminator="\n").writerow(HEADER)
        fh.write(head.getvalue().encode("utf-8"))
        for serials, codes in chunks:
            block = _csv_block(serials, codes, tail)
            if block is None:
                text = io.StringIO()
                w = csv.writer(text, lineterminator="\n")
                for serial, code in zip(serials.tolist(), codes.tolist(), strict=True):
                    w.writerow((serial.decode("utf-8"), code.decode("utf-8"), str(face), cur, expiry))
                block = text.getvalue().encode("utf-8")
            fh.write(block)
            n += len(serials)
        fh.flush()
        os.fsync(fh.fileno())
    return n


def _export(c: Client, lot: lot_pb2.Lot, tmp: Path, out: Path, max_rows: int) -> tuple[int, int, str, str]:
    cur = lot.face_value.currency
    face = Decimal(_remote.fmt_amount(lot.face_value.minor_units, cur))
    expiry = _expiry(lot)
    bar = Progress("writing")
    first, last = "", ""

    def chunks() -> Iterator[Chunk]:
        nonlocal first, last
        done = 0
        for serials, codes in c.stream_lot_arrays(lot.id):
            if len(serials):
                first = first or serials[0].decode("utf-8")
                last = serials[-1].decode("utf-8")
            yield serials, codes
            done += len(serials)
            bar(done, lot.count)
        bar(done, lot.count, force=True)

    def rows() -> Iterator[Row]:
        for serials, codes in chunks():
            for serial, code in zip(serials.tolist(), codes.tolist(), strict=True):
                yield serial.decode("utf-8"), code.decode("utf-8"), face, cur, expiry

    try:
        if output_kind(out) == "csv":
            n, sheets = _write_csv_chunks(tmp, chunks(), face, cur, expiry), 1
        else:
            n, sheets = _write_xlsx(tmp, rows(), max_rows)
    finally:
        bar.finish()
    return n, sheets, first, last


def _create(args: argparse.Namespace) -> int:
    from . import UsageError

    out = Path(args.out)
    if args.count < 1:
        raise UsageError("-n must be at least 1")
    with _remote.connect(args) as c, staged(out, force=args.force) as tmp:
        product = c.get_product(args.product)
        cur = product.currency
        if args.face_value is not None:
            face = _remote.to_minor(args.face_value, cur, "--face-value")
        elif len(product.denominations) == 1:
            face = product.denominations[0]
        else:
            choices = ", ".join(_remote.fmt_amount(d, cur) for d in product.denominations)
            raise UsageError(
                f"--face-value is needed for {product.sku}" + (f" (one of {choices})" if choices else "")
            )
        bar = Progress("minting")
        try:
            lot = c.create_lot(product.sku, args.count, face, progress=bar)
        finally:
            bar.finish()
        print(f"cardmint: lot {lot.id} minted; writing its codes to {out}", file=sys.stderr)
        n, sheets, first, last = _export(c, lot, tmp, out, args.xlsx_max_rows)
    where = f"{out}" + (f" ({sheets} sheets)" if sheets > 1 else "")
    print(
        f"lot {lot.id}: {n} cards of {_remote.fmt_money(lot.face_value.minor_units, cur)} ({product.sku}), "
        f"serials {first}..{last}, codes in {where}"
    )
    return 0


def _export_again(args: argparse.Namespace) -> int:
    out = Path(args.out)
    with _remote.connect(args) as c, staged(out, force=args.force) as tmp:
        lot = c.get_lot(args.lot)
        n, sheets, _, _ = _export(c, lot, tmp, out, args.xlsx_max_rows)
    print(f"lot {lot.id}: {n} codes in {out}" + (f" ({sheets} sheets)" if sheets > 1 else ""))
    return 0


_LOT_STATUS = {1: "minting", 2: "complete", 3: "void"}


def _list(args: argparse.Namespace) -> int:
    with _remote.connect(args) as c:
        for lot in c.list_lots(sku=args.product):
            cur = lot.face_value.currency
            print(
                f"lot {lot.id}: {lot.count} x {_remote.fmt_money(lot.face_value.minor_units, cur)}, "
                f"{_LOT_STATUS.get(lot.status, '?')}, serial prefix {lot.serial_prefix} from number {lot.serial_start}, "
                f"expires {_expiry(lot) or 'never'}" + (", exported" if lot.plaintext_exported else "")
            )
    return 0


def run(args: argparse.Namespace) -> int:
    from . import UsageError

    if args.lot_action == "list":
        return _remote.guarded(_list, args)
    if args.xlsx_max_rows < 2 or args.xlsx_max_rows > EXCEL_MAX_ROWS:
        raise UsageError(f"--xlsx-max-rows must be 2-{EXCEL_MAX_ROWS}")
    return _remote.guarded(_create if args.lot_action == "create" else _export_again, args)
