"""`cardmint keys generate` and `cardmint keys check`: the kernel on files, no server."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
from cardmint.kernel import (
    CorrectionStatus,
    DigestIndex,
    Kernel,
    Packed,
    Status,
    get_kernel,
)

from . import UsageError

# Inputs are read in blocks so a file of any size streams through in bounded memory.
BLOCK = 8 << 20
# A "line" longer than this is not a code a person pasted; it is reported malformed
# without buffering the rest of it.
MAX_LINE = 1 << 16


def _lines_out(rows: npt.NDArray[np.bytes_]) -> memoryview:
    """Fixed-width rows + b"\\n" each, as one buffer (no per-code Python work)."""
    width = rows.dtype.itemsize
    buf = np.empty((len(rows), width + 1), dtype=np.uint8)
    buf[:, :width] = rows.view(np.uint8).reshape(len(rows), width)
    buf[:, width] = 0x0A
    return buf.reshape(-1).data


def _open_secret_output(path: str) -> tuple[BinaryIO, str | None]:
    """Plaintext codes are secrets: the file is created 0600 under a temporary name and
    renamed into place only when complete, so a killed run never leaves a short file
    that looks finished."""
    if path == "-":
        return sys.stdout.buffer, None
    tmp = f"{path}.partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "wb", buffering=1 << 20), tmp


def generate(args: argparse.Namespace) -> int:
    if args.count < 0:
        raise UsageError(f"-n must be >= 0, got {args.count}")
    kernel = get_kernel()
    minter = kernel.minter(args.length, args.prefix, group=args.group)
    # Refuse before writing anything when the run cannot fit the payload space.
    space_half = (1 << minter.random_bits) // 2
    if args.count > space_half:
        raise UsageError(
            f"{args.count} unique codes do not fit: {minter.random_bits} random bits allow at most "
            f"{space_half} (use a longer --length or a shorter --prefix)"
        )
    out, tmp = _open_secret_output(args.out)
    progress = sys.stderr.isatty()
    started = time.monotonic()
    done = 0
    try:
        for batch in minter.chunks(args.count, args.chunk):
            out.write(_lines_out(kernel.display(batch.codes, args.group)))
            done += len(batch)
            if progress:
                rate = done / max(time.monotonic() - started, 1e-9)
                print(f"\r{done:,}/{args.count:,} codes  {rate / 1e6:.1f}M/s", end="", file=sys.stderr)
        out.flush()
        if tmp is not None:
            os.fsync(out.fileno())
    except BaseException:
        if tmp is not None:
            out.close()
            os.unlink(tmp)
        raise
    if tmp is not None:
        out.close()
        os.replace(tmp, args.out)
    if progress:
        print(file=sys.stderr)
    return 0


def _blocks(stream: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """Blocks of whole lines; (data, True) marks a single over-long line's first part
    (the rest of that line is swallowed)."""
    carry = b""
    skipping = False
    while True:
        chunk = stream.read(BLOCK)
        if not chunk:
            break
        data = carry + chunk
        if skipping:
            nl = data.find(b"\n")
            if nl < 0:
                carry = b""
                continue
            data = data[nl + 1 :]
            skipping = False
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
        else:
            carry = data[cut + 1 :]
            yield data[: cut + 1], False
        if len(carry) > MAX_LINE:
            yield carry[: MAX_LINE + 1], True
            carry = b""
            skipping = True
    if carry:
        yield carry, False


def _read_issued(kernel: Kernel, path: str, length: int, key: bytes) -> DigestIndex:
    with open(path, "rb") as f:
        data = f.read()
    lines = Packed.lines(data)
    res = kernel.check(lines, length)
    keep = res.status != Status.EMPTY  # blank lines are allowed in the issued file
    bad = np.flatnonzero(keep & (res.status != Status.OK))
    if len(bad):
        i = int(bad[0])
        raise UsageError(
            f"{path}: line {i + 1} is not a valid {length}-symbol code "
            f"({Status(int(res.status[i])).name.lower()}); {len(bad)} such lines"
        )
    rows = np.flatnonzero(keep)
    digests = kernel.digest(res.codes[rows], key)
    try:
        return kernel.index_from(digests)
    except ValueError as e:
        raise UsageError(f"{path}: {e} (counting non-blank lines from 0)") from None


def check(args: argparse.Namespace) -> int:
    kernel = get_kernel()
    length = args.length
    if not 4 <= length <= 31:
        raise UsageError(f"--length must be 4..31, got {length}")
    # The digests only live inside this process, so a fresh random key will do.
    key = secrets.token_bytes(32)
    index = _read_issued(kernel, args.issued, length, key) if args.issued else None
    stream: BinaryIO = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")  # noqa: SIM115
    out = sys.stdout.buffer
    all_ok = True
    try:
        for block, overlong in _blocks(stream):
            if overlong:
                out.write(b"malformed\t\t\n")
                all_ok = False
                continue
            lines = Packed.lines(block)
            res = kernel.check(lines, length)
            status = res.status
            found = None
            if index is not None:
                ok_rows = np.flatnonzero(status == Status.OK)
                found = np.zeros(len(status), dtype=bool)
                if len(ok_rows):
                    found[ok_rows] = index.lookup(kernel.digest(res.codes[ok_rows], key)) >= 0
            all_ok &= bool(np.all(status == Status.OK)) and (found is None or bool(found.all()))
            out.write(_format(kernel, lines, res.codes, status, found, index, key, length))
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    out.flush()
    return 0 if all_ok else 1


def _format(
    kernel: Kernel,
    lines: Packed,
    codes: npt.NDArray[np.bytes_],
    status: npt.NDArray[np.uint8],
    found: npt.NDArray[np.bool_] | None,
    index: DigestIndex | None,
    key: bytes,
    length: int,
) -> bytes:
    """The output lines of one block. Well-formed rows (nearly all of a real file) are
    assembled with numpy string operations; only the others go through Python."""
    n = len(status)
    # Wide enough for the longest line: "corrected\t" + code + "\t" + code + "\n".
    out = np.full(n, b"malformed\t\t\n", dtype=f"S{2 * length + 12}")
    ok = status == Status.OK
    word = np.full(n, b"ok\t", dtype="S10")
    if found is not None:
        word[~found] = b"unknown\t"
    out[ok] = np.strings.add(np.strings.add(word[ok], codes[ok]), b"\t\n")
    bad_check = status == Status.BAD_CHECK
    out[bad_check] = np.strings.add(np.strings.add(b"bad_check\t", codes[bad_check]), b"\t\n")
    if index is not None:
        # A wrong check symbol, or one U (read as an erasure): try the one-edit fixes.
        rows = np.flatnonzero(bad_check | (status == Status.BAD_CHAR))
        data = bytes(memoryview(lines.data).cast("B"))
        starts, ends = lines.offsets[rows].tolist(), lines.offsets[rows + 1].tolist()
        fixes = kernel.correct_many(
            [data[a:b] for a, b in zip(starts, ends, strict=True)], index, key, length
        )
        for row, fix in zip(rows.tolist(), fixes, strict=True):
            if fix.status == CorrectionStatus.CORRECTED:
                out[row] = f"corrected\t{fix.normalized}\t{fix.candidates[0]}\n".encode()
    return b"".join(out.tolist())
