"""`cardmint bench`: every kernel operation, every backend, against plain Python, in one run.

Ratios are what to read: absolute times on a shared machine are noisy, but every row of a
table is measured in the same run, on the same data. Medians of several repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from cardmint.kernel import Kernel, Packed, available_backends

from . import baseline

KEY = bytes(range(32))


@dataclass
class Row:
    operation: str
    backend: str
    n: int
    seconds: float
    rate: float  # items per second
    vs_baseline: float | None = None
    target: str = ""
    met: bool | None = None


@dataclass(frozen=True)
class Sizes:
    native: int
    python: int
    baseline: int
    index_native: int
    index_python: int
    index_baseline: int
    repeats: int
    scalar_calls: int
    corrections: int
    cli_lines: int


FULL = Sizes(1_000_000, 10_000, 100_000, 10_000_000, 100_000, 1_000_000, 3, 200_000, 2_000, 1_000_000)
QUICK = Sizes(100_000, 2_000, 10_000, 1_000_000, 10_000, 100_000, 3, 50_000, 300, 100_000)
TINY = Sizes(2_000, 200, 200, 5_000, 500, 500, 1, 500, 10, 1_000)

# The targets (2-core machine), for the rust rows: (minimum rate, label).
TARGETS: dict[str, tuple[float, str]] = {
    "mint+check": (20e6, ">= 20M/s"),
    "mint+check+digest+dedupe": (5e6, ">= 5M/s"),
    "check ascii": (20e6, ">= 20M/s"),
    "check unicode": (3e6, ">= 3M/s"),
    "index build": (10e6, ">= 10M/s"),
    "index lookup": (10e6, ">= 10M/s"),
    "correct (per call)": (20e3, "<= 50 us"),
    "check_one (scalar)": (1e6, "<= 1 us"),
    "keys check --issued (e2e)": (1e6 / 3, "1M lines <= 3 s"),
}


def _median(fn: Callable[[], Any], repeats: int, setup: Callable[[], Any] | None = None) -> float:
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _inputs(n: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """Display-form ASCII inputs, messy Unicode inputs, and the canonical codes."""
    k = Kernel("python") if "rust" not in available_backends() else Kernel("rust")
    codes = k.generate(n, seed=seed.to_bytes(32, "little")).codes
    shown = [c.decode().lower() for c in k.display(codes, 4).tolist()]
    fw = str.maketrans(
        {c: chr(ord(c) + 0xFEE0) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"}
    )
    messy = [(s[:4] + "\u3000" + s[5:12].translate(fw) + "\u200b" + s[12:]).upper() for s in shown]
    return shown, messy, codes


def _packed(strings: list[str]) -> Packed:
    raw = [s.encode() for s in strings]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in raw], out=offsets[1:])
    return Packed(b"".join(raw), offsets)


def _kernel_rows(k: Kernel, label: str, sizes: Sizes, threads: int) -> list[Row]:
    n = sizes.python if k.name == "python" else sizes.native
    n_idx = sizes.index_python if k.name == "python" else sizes.index_native
    reps = 1 if k.name == "python" else sizes.repeats
    rows: list[Row] = []

    def add(op: str, count: int, secs: float) -> None:
        rows.append(Row(op, label, count, secs, count / secs if secs > 0 else float("inf")))

    add("mint+check", n, _median(lambda: k.generate(n, unique=False, threads=threads), reps))
    add("mint+check+digest+dedupe", n, _median(lambda: k.generate(n, key=KEY, threads=threads), reps))
    shown, messy, codes = _inputs(n, 1)
    ascii_in, messy_in = _packed(shown), _packed(messy)
    add("check ascii", n, _median(lambda: k.check(ascii_in, threads=threads), reps))
    add("check unicode", n, _median(lambda: k.check(messy_in, threads=threads), reps))
    add("digest", n, _median(lambda: k.digest(codes, KEY, threads=threads), reps))

    digests = np.random.default_rng(2).integers(0, 256, (n_idx, 16), dtype=np.uint8)
    holder: dict[str, Any] = {}
    add(
        "index build",
        n_idx,
        _median(lambda: holder.__setitem__("idx", k.index_from(digests, threads=threads)), reps),
    )
    idx = holder["idx"]
    probe = digests[np.random.default_rng(3).integers(0, n_idx, n_idx)].copy()
    probe[::2, 0] ^= 0x5A  # half of them miss
    add("index lookup", n_idx, _median(lambda: idx.lookup(probe, threads=threads), reps))

    # Correction against the big index: mistyped copies of codes that are in it.
    ncorr = sizes.corrections if k.name != "python" else max(10, sizes.corrections // 20)
    issued = k.generate(ncorr, key=KEY, seed=bytes(32))
    assert issued.digests is not None
    cidx = k.index_from(np.concatenate([issued.digests, digests[: max(0, n_idx - ncorr)]]), threads=threads)
    typos = [
        c.decode()[:5] + ("8" if c.decode()[5] != "8" else "B") + c.decode()[6:]
        for c in issued.codes.tolist()
    ]

    def run_corrections() -> None:
        for t in typos:
            k.correct(t, cidx, KEY)

    add("correct (per call)", ncorr, _median(run_corrections, reps))

    calls = sizes.scalar_calls if k.name != "python" else sizes.scalar_calls // 10
    one = shown[0]
    check_one = k.backend.check_one  # what cardmint.kernel.check_one calls

    def scalar() -> None:
        for _ in range(calls):
            check_one(one, 16)

    add("check_one (scalar)", calls, _median(scalar, reps))

    d = k.digest(codes, KEY)
    add("seal", n, _median(lambda: k.seal(codes, d, KEY), reps))
    sealed = k.seal(codes, d, KEY)
    add("open", n, _median(lambda: k.open(sealed, d, KEY), reps))
    return rows


def _cli_files(n: int, tmp: str) -> tuple[str, str]:
    """n issued codes, and n pasted lines: most issued (lower case, grouped), some typos,
    some strangers, some junk, like a day of support tickets."""
    k = Kernel("rust") if "rust" in available_backends() else Kernel("python")
    issued = k.generate(n, seed=bytes(32)).codes
    shown = k.display(issued, 4).tolist()
    strangers = k.display(k.generate(max(1, n // 10), seed=bytes([1] * 32)).codes, 4).tolist()
    lines = [s.lower() for s in shown[: n - n // 5]] + strangers[: n // 10]
    lines += [s[:-1] + (b"0" if s[-1:] != b"0" else b"1") for s in shown[: n - len(lines) - 10]]
    lines += [b"not a code"] * (n - len(lines))
    issued_path, input_path = os.path.join(tmp, "issued.txt"), os.path.join(tmp, "input.txt")
    with open(issued_path, "wb") as f:
        f.write(b"\n".join(shown) + b"\n")
    with open(input_path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return issued_path, input_path


def _cli_rows(sizes: Sizes, names: list[str]) -> list[Row]:
    """`cardmint keys check --issued` end to end, as a process, per backend."""
    import subprocess
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        issued, inputs = _cli_files(sizes.cli_lines, tmp)
        for name in names:
            n = sizes.cli_lines if name != "python" else max(100, sizes.cli_lines // 100)
            small = os.path.join(tmp, "input-small.txt")
            small_issued = os.path.join(tmp, "issued-small.txt")
            if name == "python":  # the reference is too slow for the full files
                for path, cut in ((inputs, small), (issued, small_issued)):
                    with open(path, "rb") as src, open(cut, "wb") as dst:
                        dst.write(b"".join(src.readline() for _ in range(n)))
            cmd = [
                sys.executable,
                "-m",
                "cardmint.cli",
                "keys",
                "check",
                "--issued",
                small_issued if name == "python" else issued,
                small if name == "python" else inputs,
            ]
            env = {**os.environ, "CARDMINT_KERNEL": name}

            def once(cmd: list[str] = cmd, env: dict[str, str] = env) -> None:
                subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False)  # noqa: S603

            secs = _median(once, 1 if name == "python" else sizes.repeats)
            rows.append(Row("keys check --issued (e2e)", name, n, secs, n / secs))
        with open(issued, encoding="utf-8") as text:
            issued_lines = text.read().splitlines()
        with open(inputs, encoding="utf-8") as text:
            input_lines = text.read().splitlines()
        nb = min(len(input_lines), sizes.baseline)
        secs = _median(lambda: baseline.keys_check(issued_lines[:nb], input_lines[:nb], KEY), 1)
        rows.append(Row("keys check --issued (e2e)", "plain python", nb, secs, nb / secs))
    return rows


def _baseline_rows(sizes: Sizes) -> list[Row]:
    n, n_idx, reps = sizes.baseline, sizes.index_baseline, 1
    rows: list[Row] = []

    def add(op: str, count: int, secs: float) -> None:
        rows.append(Row(op, "plain python", count, secs, count / secs))

    add("mint+check", n, _median(lambda: baseline.mint(n), reps))
    add("mint+check+digest+dedupe", n, _median(lambda: baseline.mint_digest(n, KEY), reps))
    shown, messy, codes = _inputs(n, 1)
    add("check ascii", n, _median(lambda: [baseline.normalize_check(s) for s in shown], reps))
    add("check unicode", n, _median(lambda: [baseline.normalize_check(s) for s in messy], reps))
    strs = [c.decode() for c in codes.tolist()]
    add("digest", n, _median(lambda: baseline.digest(strs, KEY), reps))
    digests = [bytes(r) for r in np.random.default_rng(2).integers(0, 256, (n_idx, 16), dtype=np.uint8)]
    add("index build", n_idx, _median(lambda: baseline.build_index(digests), reps))
    index = baseline.build_index(digests)
    probe = [d if i % 2 else bytes([d[0] ^ 0x5A]) + d[1:] for i, d in enumerate(digests)]
    add("index lookup", n_idx, _median(lambda: baseline.lookup(index, probe), reps))
    ncorr = max(10, sizes.corrections // 20)
    issued = strs[:ncorr]
    for dg in baseline.digest(issued, KEY):
        index[dg] = len(index)
    typos = [c[:5] + ("8" if c[5] != "8" else "B") + c[6:] for c in issued]
    add("correct (per call)", ncorr, _median(lambda: [baseline.correct(t, index, KEY) for t in typos], reps))
    calls = sizes.scalar_calls // 10
    one = shown[0]
    add(
        "check_one (scalar)",
        calls,
        _median(lambda: [baseline.normalize_check(one) for _ in range(calls)], reps),
    )

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    aead = ChaCha20Poly1305(KEY)
    code_digests = baseline.digest(strs, KEY)
    enc = [c.encode() for c in strs]

    def seal() -> list[bytes]:
        out = []
        for c, d in zip(enc, code_digests, strict=True):
            nonce = os.urandom(12)
            out.append(nonce + aead.encrypt(nonce, c, d))
        return out

    add("seal", n, _median(seal, reps))
    sealed = seal()
    add(
        "open",
        n,
        _median(
            lambda: [aead.decrypt(s[:12], s[12:], d) for s, d in zip(sealed, code_digests, strict=True)], reps
        ),
    )
    return rows


def measure(sizes: Sizes, backends: list[str] | None = None) -> list[Row]:
    names = backends or available_backends()
    rows: list[Row] = []
    for name in names:
        k = Kernel(name)
        if name == "rust":
            rows += _kernel_rows(k, "rust", sizes, threads=0)
            rows += _kernel_rows(k, "rust 1 thread", sizes, threads=1)
        else:
            rows += _kernel_rows(k, name, sizes, threads=0)
    cli = _cli_rows(sizes, names)
    rows += [r for r in cli if r.backend != "plain python"]
    base = _baseline_rows(sizes) + [r for r in cli if r.backend == "plain python"]
    by_op = {r.operation: r.rate for r in base}
    for r in rows:
        r.vs_baseline = r.rate / by_op[r.operation]
        if r.backend == "rust" and r.operation in TARGETS:
            minimum, label = TARGETS[r.operation]
            r.target, r.met = label, r.rate >= minimum
    for r in base:
        r.vs_baseline = 1.0
    return rows + base


def _rate(r: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if r >= scale:
            return f"{r / scale:7.2f} {unit}/s"
    return f"{r:7.1f}  /s"


def table(rows: list[Row]) -> str:
    head = f"{'operation':<26} {'backend':<14} {'n':>11} {'median':>10} {'rate':>12} {'per item':>10} {'x plain':>9}  target"
    lines = [head, "-" * len(head)]
    last = None
    for r in sorted(
        rows, key=lambda r: (list(TARGETS).index(r.operation) if r.operation in TARGETS else 99, r.operation)
    ):
        if last is not None and r.operation != last:
            lines.append("")
        last = r.operation
        per = 1e9 / r.rate if r.rate else float("inf")
        per_s = f"{per:8.0f}ns" if per < 1e4 else f"{per / 1e3:7.1f}us"
        ratio = f"{r.vs_baseline:8.1f}x" if r.vs_baseline is not None else ""
        mark = "" if r.met is None else (" met" if r.met else " MISSED")
        lines.append(
            f"{r.operation:<26} {r.backend:<14} {r.n:>11,} {r.seconds:>9.4f}s {_rate(r.rate)} {per_s:>10} {ratio:>9}  {r.target}{mark}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    tiny = os.environ.get("CARDMINT_BENCH_SIZE") == "tiny"
    sizes = TINY if tiny else (QUICK if args.quick else FULL)
    started = time.time()
    rows = measure(sizes)
    print(
        f"cardmint bench ({'tiny' if tiny else 'quick' if args.quick else 'full'}): "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, backends {', '.join(available_backends())}"
    )
    print(table(rows))
    print(
        f"({time.time() - started:.0f} s; rates are medians of {sizes.repeats} runs; 'x plain' = rate / plain-Python rate)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": {
                        "cores": os.cpu_count(),
                        "python": platform.python_version(),
                        "platform": platform.platform(),
                    },
                    "sizes": asdict(sizes),
                    "rows": [asdict(r) for r in rows],
                },
                f,
                indent=1,
            )
    sys.stdout.flush()
    return 0
