"""What the installed distribution ships: typed packages (PEP 561) and the native modules'
stubs next to the binaries (``make lint`` runs mypy.stubtest on them)."""

from __future__ import annotations

import importlib
from importlib import metadata
from pathlib import Path

import pytest

TYPED = ("cardmint.kernel", "cardmint.cli", "cardmint.server", "cardmint.client", "cardmint.v1")


@pytest.mark.parametrize("package", TYPED)
def test_every_package_is_marked_typed(package: str) -> None:
    mod = importlib.import_module(package)
    assert mod.__file__ is not None
    assert (Path(mod.__file__).parent / "py.typed").is_file()


@pytest.mark.parametrize("module", ["cardmint.kernel._rust", "cardmint.kernel._cy"])
def test_native_modules_ship_their_stubs(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__file__ is not None and mod.__file__.endswith(".so")
    stub = Path(mod.__file__).parent / (module.rsplit(".", 1)[1] + ".pyi")
    assert stub.is_file()
    # every public name of the binary is declared in its stub
    text = stub.read_text()
    public = [n for n in dir(mod) if not n.startswith("_")]
    assert public and all(f"{n}" in text for n in public), [n for n in public if n not in text]


def test_the_distribution_records_the_stubs_and_markers() -> None:
    import cardmint.kernel

    # The installed distribution's record (not a source tree's egg-info on sys.path).
    site = str(Path(cardmint.kernel.__file__).parents[2])
    (dist,) = [d for d in metadata.distributions(path=[site]) if d.metadata["Name"] == "cardmint"]
    files = {str(f) for f in dist.files or []}
    for name in ("cardmint/kernel/_rust.pyi", "cardmint/kernel/_cy.pyi", "cardmint/kernel/py.typed"):
        assert name in files, name
    assert any(f.startswith("cardmint/kernel/_rust") and f.endswith(".so") for f in files)
    assert any(f.startswith("cardmint/kernel/_cy") and f.endswith(".so") for f in files)
