"""Every repository path the docs name exists, every relative link lands on a file, and
every link to code whose text names a definition (``[`IssuedIndex`](../server/...)``) lands
on a file that defines it: a renamed file or class breaks the test, not the reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "clients").glob("*/README.md")])
# A path into the repository: a top-level folder, then anything a path holds. Not preceded
# by a word character, "/" or "." (so URLs and cardmint.server... module names do not count).
PATH = re.compile(
    r"(?<![\w/.\-])(?:server|kernel|clients|proto|tests|docs|benches|rust|\.ci)/[\w./*\-]*[\w*/]"
)
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
DEFINED = r"(?m)^\s*(?:cdef\s+)?(?:class|def)\s+{0}\b|^\s*{0}\s*(?::[^=\n]*)?=|^\s*(?:async\s+)?def\s+{0}\b"


def _exists(path: str) -> bool:
    path = path.rstrip("/.")
    return bool(list(ROOT.glob(path))) if "*" in path else (ROOT / path).exists()


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_named_paths_exist(doc: Path) -> None:
    missing = sorted({m.group(0) for m in PATH.finditer(doc.read_text()) if not _exists(m.group(0))})
    assert missing == [], f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_links_land(doc: Path) -> None:
    bad = []
    for text, target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL, or an anchor in the page itself
        file = (doc.parent / target.split("#", 1)[0]).resolve()
        if not file.exists():
            bad.append(f"{target}: no such file")
            continue
        name = re.fullmatch(r"`(?:[\w.]+\.)?(\w+)(?:\(\))?`", text)
        if (
            name
            and file.suffix in (".py", ".pyx")
            and not re.search(DEFINED.format(name[1]), file.read_text())
        ):
            bad.append(f"{target}: defines no {name[1]}")
    assert bad == [], f"{doc.relative_to(ROOT)}: {bad}"


def test_the_check_sees_a_missing_path() -> None:
    assert _exists("server/domain/errors.py") and _exists("proto/cardmint/v1/*.proto")
    assert not _exists("server/domain/no_such_module.py")
    assert PATH.findall("see `server/app.py` and server/storage/ (not https://x.org/docs/y)") == [
        "server/app.py",
        "server/storage/",
    ]


def test_the_readme_lists_every_doc() -> None:
    section = (ROOT / "README.md").read_text().split("\n## Docs\n", 1)[1].split("\n## ", 1)[0]
    listed = {target for _, target in LINK.findall(section)}
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert sorted(pages - listed) == [], "README.md's Docs list misses these pages"
