#!/usr/bin/env python3
"""Compare a benchmark run's ratios with the baseline kept in the repository.

    python benches/compare.py RUN.json [--baseline benches/baseline.json]
                              [--threshold 0.25] [--fail-factor 10]
    python benches/compare.py --merge OUT.json RUN1.json RUN2.json RUN3.json

RUN.json and the baseline are what ``cardmint bench --ci --json FILE`` writes; only their
``ratios`` are read: a kernel backend's rate over the plain-Python rate, a server call's
calls/s over a bare echo server's, each measured in the same run. Absolute times are never
compared: the CI machine is shared and noisy, but both sides of a ratio see the same noise.
Higher is better for every ratio.

Each row is one of: ``ok`` (within the threshold), ``REGRESSION`` (below the baseline by
more than ``--threshold``, default 25%), ``improved`` (above it by as much), ``FAIL`` (below
the baseline by more than ``--fail-factor``, default 10x), ``missing`` (in the baseline, not
in the run) or ``new`` (no baseline yet). Regressions are printed loudly but do not fail:
on 2 shared cores a ratio moves by 25%, and the smallest rows by up to 5x, from one run to
the next. Only a FAIL row makes the exit status 1 (``--fail-factor 0``: never), and only
when the run and the baseline were measured at the same size. The ratios a file lists under
``noisy`` (the kernel rows on every core, whose speed-up needs idle cores, and the Python
reference's single timings) are flagged but never FAIL.

``--merge OUT RUN...`` writes a baseline whose every ratio is the median of the runs' (the
first run's other fields kept): ``make bench-baseline`` measures three runs and merges them,
so that one unlucky run does not become the yardstick (commit the file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BASELINE = Path(__file__).resolve().parent / "baseline.json"
DEFAULT_THRESHOLD = 0.25
DEFAULT_FAIL_FACTOR = 10.0

OK, REGRESSION, IMPROVED, FAIL, MISSING, NEW = "ok", "REGRESSION", "improved", "FAIL", "missing", "new"


@dataclass(frozen=True)
class Line:
    key: str
    baseline: float | None
    run: float | None
    verdict: str

    @property
    def change(self) -> float | None:
        """run / baseline - 1 (None when either side is missing or the baseline is 0)."""
        if self.baseline is None or self.run is None or self.baseline <= 0:
            return None
        return self.run / self.baseline - 1


def load(path: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """(ratios, the rest of the file) of a ``cardmint bench --ci --json`` file."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("ratios"), dict):
        raise ValueError(f"{path}: no 'ratios' object (write it with `cardmint bench --ci --json FILE`)")
    ratios = {str(k): float(v) for k, v in data["ratios"].items()}
    return ratios, {k: v for k, v in data.items() if k != "ratios"}


def compare(
    baseline: dict[str, float],
    run: dict[str, float],
    threshold: float = DEFAULT_THRESHOLD,
    fail_factor: float = DEFAULT_FAIL_FACTOR,
    noisy: Collection[str] = (),
) -> list[Line]:
    """One line per key of either side: the baseline's keys in order, then the new ones.
    A ``noisy`` key is flagged like any other but never FAILs (REGRESSION at worst)."""
    lines: list[Line] = []
    for key, base in baseline.items():
        now = run.get(key)
        if now is None:
            lines.append(Line(key, base, None, MISSING))
        elif fail_factor > 0 and now * fail_factor < base and key not in noisy:
            lines.append(Line(key, base, now, FAIL))
        elif now < base * (1 - threshold):
            lines.append(Line(key, base, now, REGRESSION))
        elif now > base * (1 + threshold):
            lines.append(Line(key, base, now, IMPROVED))
        else:
            lines.append(Line(key, base, now, OK))
    lines += [Line(key, None, value, NEW) for key, value in run.items() if key not in baseline]
    return lines


def merge(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per key, the median of the runs that have it (keys in first-seen order)."""
    keys = list(dict.fromkeys(k for run in runs for k in run))
    return {k: round(statistics.median(run[k] for run in runs if k in run), 4) for k in keys}


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def render(lines: Sequence[Line], threshold: float, fail_factor: float, noisy: Collection[str] = ()) -> str:
    width = max([len("ratio"), *(len(line.key) for line in lines)])
    head = f"{'ratio':<{width}} {'baseline':>10} {'this run':>10} {'change':>8}  verdict"
    out = [head, "-" * len(head)]
    for line in lines:
        change = "-" if line.change is None else f"{line.change:+.0%}"
        loud = " <<<" if line.verdict in (REGRESSION, FAIL) else ""
        if loud and line.key in noisy:
            loud += " (noisy: never fails)"
        out.append(
            f"{line.key:<{width}} {_num(line.baseline):>10} {_num(line.run):>10} {change:>8}  {line.verdict}{loud}"
        )
    counts = {
        v: sum(line.verdict == v for line in lines) for v in (OK, REGRESSION, IMPROVED, FAIL, MISSING, NEW)
    }
    fail_text = (
        f"{counts[FAIL]} below 1/{fail_factor:g} of it (failing)" if fail_factor > 0 else "failing disabled"
    )
    out.append(
        f"{len(lines)} ratios: {counts[OK]} ok, {counts[REGRESSION]} regressed beyond {threshold:.0%}, "
        f"{fail_text}, {counts[IMPROVED]} improved, {counts[MISSING]} missing, {counts[NEW]} new"
    )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benches/compare.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, nargs="+", help="this run's `cardmint bench --ci --json` file")
    ap.add_argument(
        "--merge", type=Path, metavar="OUT", help="write OUT: the median ratios of the runs given"
    )
    ap.add_argument(
        "--baseline", type=Path, default=DEFAULT_BASELINE, help="the baseline (benches/baseline.json)"
    )
    ap.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="flag a ratio this far below (or above) its baseline, as a fraction (default 0.25)",
    )
    ap.add_argument(
        "--fail-factor",
        type=float,
        default=DEFAULT_FAIL_FACTOR,
        help="exit 1 when a ratio falls below baseline / this (default 10; 0 = never fail)",
    )
    args = ap.parse_args(argv)
    if not 0 < args.threshold < 1 or args.fail_factor < 0 or 0 < args.fail_factor <= 1:
        ap.error("--threshold must be in (0, 1) and --fail-factor 0 or above 1")
    if args.merge is None and len(args.run) != 1:
        ap.error("compare one run (several only with --merge)")
    try:
        if args.merge is not None:
            loaded = [load(path) for path in args.run]
            merged = {
                **loaded[0][1],
                "ratios": merge([ratios for ratios, _ in loaded]),
                "merged_runs": len(loaded),
            }
            args.merge.write_text(json.dumps(merged, indent=1) + "\n")
            print(f"{args.merge}: median of {len(loaded)} runs, {len(merged['ratios'])} ratios")
            return 0
        base, base_meta = load(args.baseline)
        run, run_meta = load(args.run[0])
    except (OSError, ValueError) as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    noisy = {str(k) for meta in (base_meta, run_meta) for k in meta.get("noisy", ())}
    lines = compare(base, run, args.threshold, args.fail_factor, noisy)
    print(f"benchmark ratios: {args.run[0]} vs baseline {args.baseline}")
    print(render(lines, args.threshold, args.fail_factor, noisy))
    same_size = base_meta.get("size") == run_meta.get("size")
    if not same_size:
        print(
            f"NOTE: sizes differ (baseline {base_meta.get('size')!r}, run {run_meta.get('size')!r}): "
            "ratios shown, nothing fails"
        )
    regressions = [line.key for line in lines if line.verdict in (REGRESSION, FAIL)]
    if regressions:
        print(f"WARNING: {len(regressions)} ratio(s) below the baseline by more than {args.threshold:.0%}:")
        for key in regressions:
            print(f"  {key}")
    failed = same_size and any(line.verdict == FAIL for line in lines)
    if failed:
        print(f"FAILED: a ratio fell below 1/{args.fail_factor:g} of its baseline (see the FAIL rows)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
