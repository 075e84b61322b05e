"""benches/compare.py on synthetic ratios: a regression is flagged, an improvement is not,
missing and new keys are reported, only a fall beyond the fail factor fails (and only at
equal sizes); and `cardmint bench --ci` at toy size writes a file it reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benches.compare import (
    FAIL,
    IMPROVED,
    MISSING,
    NEW,
    OK,
    REGRESSION,
    compare,
    main,
    merge,
)


def _write(path: Path, ratios: dict[str, float], size: str = "quick") -> Path:
    path.write_text(json.dumps({"kind": "cardmint-bench-ci", "size": size, "ratios": ratios}))
    return path


def _verdicts(base: dict[str, float], run: dict[str, float], **kw: Any) -> dict[str, str]:
    """``compare``'s verdict per key (``kw``: its threshold, fail_factor, noisy)."""
    return {line.key: line.verdict for line in compare(base, run, **kw)}


def test_regression_flagged_improvement_not() -> None:
    base = {"a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0}
    run = {"a": 7.0, "b": 13.0, "c": 8.0, "d": 0.5}
    assert _verdicts(base, run) == {"a": REGRESSION, "b": IMPROVED, "c": OK, "d": FAIL}
    # The threshold is configurable; the fail factor can be switched off.
    assert _verdicts(base, run, threshold=0.1, fail_factor=0)["c"] == REGRESSION
    assert _verdicts(base, run, fail_factor=0)["d"] == REGRESSION


def test_a_noisy_ratio_is_flagged_but_never_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _verdicts({"n": 10.0}, {"n": 0.1}, noisy={"n"}) == {"n": REGRESSION}
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"size": "quick", "ratios": {"n": 10.0, "q": 1.0}, "noisy": ["n"]}))
    run = _write(tmp_path / "run.json", {"n": 0.1, "q": 1.0})
    assert main([str(run), "--baseline", str(base)]) == 0
    assert "(noisy: never fails)" in capsys.readouterr().out


def test_missing_and_new_keys() -> None:
    lines = compare({"old": 1.0, "both": 2.0}, {"both": 2.0, "fresh": 3.0})
    assert [(line.key, line.verdict) for line in lines] == [("old", MISSING), ("both", OK), ("fresh", NEW)]
    assert lines[0].change is None and lines[2].change is None and lines[1].change == 0


@given(
    st.floats(min_value=1e-3, max_value=1e6),
    st.floats(min_value=1e-3, max_value=1e6),
    st.floats(min_value=0.01, max_value=0.99),
)
def test_verdict_follows_the_ratio(base: float, run: float, threshold: float) -> None:
    [line] = compare({"k": base}, {"k": run}, threshold=threshold, fail_factor=0)
    if run < base * (1 - threshold):
        assert line.verdict == REGRESSION
    elif run > base * (1 + threshold):
        assert line.verdict == IMPROVED
    else:
        assert line.verdict == OK


def test_main_warns_on_regression_and_fails_only_beyond_the_factor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _write(tmp_path / "base.json", {"kernel x [rust]": 100.0, "server y [sqlite]": 0.5})
    slow = _write(tmp_path / "slow.json", {"kernel x [rust]": 60.0, "server y [sqlite]": 0.5})
    assert main([str(slow), "--baseline", str(base)]) == 0
    out = capsys.readouterr().out
    assert "REGRESSION <<<" in out and "WARNING: 1 ratio(s)" in out and "kernel x [rust]" in out
    broken = _write(tmp_path / "broken.json", {"kernel x [rust]": 5.0, "server y [sqlite]": 0.5})
    assert main([str(broken), "--baseline", str(base)]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert main([str(broken), "--baseline", str(base), "--fail-factor", "0"]) == 0
    capsys.readouterr()
    # A run at another size is shown but never fails.
    tiny = _write(tmp_path / "tiny.json", {"kernel x [rust]": 10.0}, size="tiny")
    assert main([str(tiny), "--baseline", str(base)]) == 0
    assert "sizes differ" in capsys.readouterr().out


def test_merge_takes_the_median_of_each_ratio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [{"a": 1.0, "b": 10.0}, {"a": 3.0, "b": 1.0}, {"a": 2.0, "c": 7.0}]
    assert merge(runs) == {"a": 2.0, "b": 5.5, "c": 7.0}
    paths = [str(_write(tmp_path / f"r{i}.json", r)) for i, r in enumerate(runs)]
    out = tmp_path / "baseline.json"
    assert main(["--merge", str(out), *paths]) == 0
    data = json.loads(out.read_text())
    assert (
        data["ratios"] == {"a": 2.0, "b": 5.5, "c": 7.0}
        and data["size"] == "quick"
        and data["merged_runs"] == 3
    )
    capsys.readouterr()
    with pytest.raises(SystemExit):  # several runs only with --merge
        main(paths)


def test_main_refuses_a_file_without_ratios(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    assert main([str(bad), "--baseline", str(bad)]) == 2
    assert "no 'ratios'" in capsys.readouterr().err


def test_bench_ci_writes_ratios_compare_reads(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    p = subprocess.run(
        [sys.executable, "-m", "cardmint.cli", "bench", "--ci", "--json", str(out)],
        env={**os.environ, "CARDMINT_BENCH_SIZE": "tiny"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads(out.read_text())
    ratios = data["ratios"]
    assert data["size"] == "tiny"
    for backend in ("rust", "cython", "python"):
        assert f"kernel check ascii [{backend}]" in ratios
    for call in ("GetBalance", "Redeem", "BindCard"):
        assert ratios[f"server {call} (8 clients) [sqlite]"] > 0
    assert all(v > 0 for v in ratios.values())
    assert "kernel check ascii [rust]" in data["noisy"] and "kernel check ascii [cython]" not in data["noisy"]
    assert "x echo" in p.stdout and "x plain" in p.stdout
    # Against itself: every ratio ok.
    assert {line.verdict for line in compare(ratios, ratios)} == {OK}
    assert main([str(out), "--baseline", str(out)]) == 0
