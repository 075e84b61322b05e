"""Generate the Python code of cardmint.v1 from proto/cardmint/v1/*.proto.

    python proto/generate.py          # (re)write proto/python/*_pb2*.py{,i}
    python proto/generate.py --check  # exit 1 if the committed files differ from a fresh run

protoc runs with ``-I proto``, so the generated modules import each other as
``from cardmint.v1 import common_pb2`` — the installed package name, because setuptools maps
``cardmint.v1`` to ``proto/python``. protoc writes them under ``<out>/cardmint/v1/``; we let it
do that in a scratch directory and copy the files flat into ``proto/python/``, which keeps the
import lines exactly as protoc wrote them (no rewriting to get wrong).

The output depends on the pinned grpcio-tools, protobuf and mypy-protobuf versions
(requirements-dev.txt); a version bump shows up as drift, which is intended.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SOURCES = ROOT / "cardmint" / "v1"
OUT = ROOT / "python"
# Hand-written files in proto/python that generation must leave alone.
KEEP = {"__init__.py", "py.typed"}


def _plugin(name: str) -> str:
    # The plugins are console scripts of mypy-protobuf, next to this interpreter in a venv,
    # which need not be on PATH (e.g. `make` calls .venv/bin/python directly).
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"generate.py: {name} not found: install mypy-protobuf (requirements-dev.txt)")
    return found


def generate(dest: Path) -> dict[str, bytes]:
    """Run protoc into ``dest``; return the generated files by name."""
    protos = sorted(p.relative_to(ROOT).as_posix() for p in SOURCES.glob("*.proto"))
    if not protos:
        raise SystemExit(f"generate.py: no .proto files in {SOURCES}")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        str(ROOT),
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={dest}",
        f"--grpc_python_out={dest}",
        f"--mypy_out={dest}",
        f"--mypy_grpc_out={dest}",
        *protos,
    ]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)  # noqa: S603
    if run.returncode != 0:
        raise SystemExit(f"generate.py: protoc failed:\n{run.stderr}")
    produced = dest / "cardmint" / "v1"
    return {p.name: p.read_bytes() for p in sorted(produced.iterdir()) if p.is_file()}


def committed() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(OUT.iterdir()) if p.is_file() and p.name not in KEEP}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail (exit 1) when proto/python is stale")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cardmint-proto-") as tmp:
        fresh = generate(Path(tmp))
    old = committed()
    if args.check:
        stale = sorted(n for n in fresh.keys() | old.keys() if fresh.get(n) != old.get(n))
        for name in stale:
            a = old.get(name, b"").decode(errors="replace").splitlines(keepends=True)
            b = fresh.get(name, b"").decode(errors="replace").splitlines(keepends=True)
            diff = list(difflib.unified_diff(a, b, f"committed/{name}", f"generated/{name}", n=1))
            sys.stderr.writelines(diff[:40] if diff else [f"{name}: missing\n"])
        if stale:
            print(
                f"generate.py: proto/python is out of date ({', '.join(stale)}); run python proto/generate.py",
                file=sys.stderr,
            )
            return 1
        print(f"generate.py: proto/python matches the .proto files ({len(fresh)} files)")
        return 0
    for name in old.keys() - fresh.keys():
        (OUT / name).unlink()  # a removed .proto leaves no orphan module behind
    for name, data in fresh.items():
        if old.get(name) != data:
            (OUT / name).write_bytes(data)
    print(f"generate.py: wrote {len(fresh)} files to {OUT.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
