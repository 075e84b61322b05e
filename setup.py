"""Build glue: the Cython extension, and the Rust extension through maturin.

`pip install .` runs both. maturin builds `rust/cardmint-py` into a wheel; we take its
single extension module (`cardmint/kernel/_rust*.so`) into this distribution, so the
installed package has one import namespace and no separate native distribution.

CARDMINT_REQUIRE_NATIVE=1 (set by the Makefile and CI) turns a failed native build into a
failed install instead of a silent fallback to the slower backends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from setuptools import Distribution, Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
REQUIRE = os.environ.get("CARDMINT_REQUIRE_NATIVE") == "1"
# Which native parts to build: "all" (default), "cython", "rust" or "none" (pure Python).
NATIVE = os.environ.get("CARDMINT_NATIVE", "all")
if NATIVE not in {"all", "cython", "rust", "none"}:
    raise SystemExit(f"CARDMINT_NATIVE must be all, cython, rust or none, got {NATIVE!r}")


def _cython_extensions() -> list[Extension]:
    csrc = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kernel" / "csrc").glob("*.c"))
    ext = Extension(
        "cardmint.kernel._cy",
        sources=["kernel/_cy.pyx", *csrc],
        include_dirs=["kernel/csrc"],
        libraries=["crypto"],
        extra_compile_args=["-O3", "-Wall", "-Wno-unused-function"],
    )
    # The SQLite audit reader: libsqlite3, the library the sqlite3 module itself links.
    audit = Extension(
        "cardmint.server.storage._sqlite_audit",
        sources=["server/storage/_sqlite_audit.pyx"],
        libraries=["sqlite3"],
        extra_compile_args=["-O3", "-Wall", "-Wno-unused-function"],
    )
    # The group commit's statements, run holding the GIL (server/storage/_sqlite_writer.pyx).
    writer = Extension(
        "cardmint.server.storage._sqlite_writer",
        sources=["server/storage/_sqlite_writer.pyx"],
        libraries=["sqlite3"],
        extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
    )
    if NATIVE not in {"all", "cython"} or not (ROOT / "kernel" / "_cy.pyx").exists():
        return []
    from Cython.Build import cythonize

    return cythonize([ext, audit, writer], language_level=3, quiet=True, build_dir="build/cython")


class BuildNative(build_ext):
    """build_ext for the Cython module, then maturin for the Rust one."""

    def run(self) -> None:
        try:
            if self.extensions:
                super().run()
        except Exception as e:  # a machine without a C compiler still gets rust + python
            if REQUIRE:
                raise
            print(f"warning: Cython kernel not built: {e}", file=sys.stderr)
        self._build_rust()

    def _build_rust(self) -> None:
        manifest = ROOT / "rust" / "cardmint-py" / "Cargo.toml"
        if NATIVE not in {"all", "rust"} or not manifest.exists():
            return
        maturin = shutil.which("maturin") or str(Path(sys.executable).with_name("maturin"))
        with tempfile.TemporaryDirectory() as out:
            cmd = [
                maturin,
                "build",
                "--release",
                "--locked",
                "-m",
                str(manifest),
                "-o",
                out,
                "--interpreter",
                sys.executable,
            ]
            try:
                subprocess.run(cmd, check=True, cwd=ROOT)  # noqa: S603 - our own fixed command
            except (OSError, subprocess.CalledProcessError) as e:
                if REQUIRE:
                    raise
                print(f"warning: Rust kernel not built: {e}", file=sys.stderr)
                return
            wheels = list(Path(out).glob("*.whl"))
            if len(wheels) != 1:
                raise RuntimeError(f"maturin produced {wheels}, expected one wheel")
            dest = Path(self.build_lib) / "cardmint" / "kernel"
            dest.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheels[0]) as zf:
                mods = [
                    n for n in zf.namelist() if n.startswith("cardmint/kernel/_rust") and n.endswith(".so")
                ]
                if len(mods) != 1:
                    raise RuntimeError(
                        f"expected one cardmint/kernel/_rust*.so in {wheels[0].name}, got {mods}"
                    )
                # The module and its type stub (checked by mypy against the face).
                for name in [mods[0], "cardmint/kernel/_rust.pyi"]:
                    (dest / Path(name).name).write_bytes(zf.read(name))


class NativeDistribution(Distribution):
    """Always platform-specific: build_ext must run even when only the Rust part exists."""

    def has_ext_modules(self) -> bool:
        return True


setup(ext_modules=_cython_extensions(), cmdclass={"build_ext": BuildNative}, distclass=NativeDistribution)
