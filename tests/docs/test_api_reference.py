"""docs/api-reference.md is generated from the .proto comments (proto/gendoc.py) and kept so.

The committed page must match a fresh run (the same check ``make lint`` runs); an element
without a comment must make the generator fail, naming it; and every element the installed
``cardmint.v1`` descriptors know must be on the page, with every link landing on an anchor.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cardmint.v1 as v1
import pytest

ROOT = Path(__file__).resolve().parents[2]
GENDOC = ROOT / "proto" / "gendoc.py"
PAGE = ROOT / "docs" / "api-reference.md"


def gendoc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENDOC), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_committed_reference_matches_the_proto_files() -> None:
    done = gendoc("--check")
    assert done.returncode == 0, done.stderr


def test_check_names_a_stale_page(tmp_path: Path) -> None:
    stale = tmp_path / "api-reference.md"
    stale.write_text(PAGE.read_text().replace("### Money\n", "### Cash\n"))
    done = gendoc("--check", "--out", str(stale))
    assert done.returncode == 1
    assert "-### Cash" in done.stderr and "+### Money" in done.stderr  # a diff, committed vs fresh
    assert "out of date" in done.stderr and "run python proto/gendoc.py" in done.stderr
    assert stale.read_text().count("### Cash") == 1  # --check never writes


def _copy_protos(tmp_path: Path) -> Path:
    sources = tmp_path / "cardmint" / "v1"
    shutil.copytree(ROOT / "proto" / "cardmint" / "v1", sources)
    return sources


# (file, the line whose comment is removed, what the generator must name)
UNDOCUMENTED = [
    ("common.proto", "message Money {", "message Money has no comment"),
    ("common.proto", "  int64 minor_units = 1;", "field Money.minor_units has no comment"),
    (
        "keys.proto",
        "  rpc Generate(GenerateRequest) returns (stream GenerateResponse);",
        "rpc KeyService.Generate",
    ),
    ("keys.proto", "service KeyService {", "service KeyService has no comment"),
    ("keys.proto", "  CODE_STATUS_FROZEN = 6;", "enum value CodeStatus.CODE_STATUS_FROZEN has no comment"),
    ("balance.proto", "  oneof subject {", "oneof GetBalanceRequest.subject has no comment"),
    ("event.proto", 'syntax = "proto3";', "file event.proto"),
]


@pytest.mark.parametrize(
    ("name", "line", "named"), UNDOCUMENTED, ids=[u[2].split(" has")[0] for u in UNDOCUMENTED]
)
def test_an_undocumented_element_fails_the_generator(
    tmp_path: Path, name: str, line: str, named: str
) -> None:
    sources = _copy_protos(tmp_path)
    proto = sources / name
    lines = proto.read_text().split("\n")
    at = lines.index(line)  # the first one: the element whose comment we drop
    start = at
    while start > 0 and lines[start - 1].lstrip().startswith("//"):
        start -= 1
    assert start < at, f"{name}: {line!r} had no comment to remove"
    proto.write_text("\n".join(lines[:start] + lines[at:]))
    out = tmp_path / "ref.md"
    done = gendoc("--sources", str(sources), "--out", str(out))
    assert done.returncode == 1
    assert named in done.stderr
    assert f"cardmint/v1/{name}:{start + 1}:" in done.stderr  # file:line of the element
    assert "1 undocumented element" in done.stderr
    assert not out.exists()


def test_the_page_covers_every_service_method_message_and_enum() -> None:
    text = PAGE.read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    assert len(anchors) == len(re.findall(r'<a id="', text)), "an anchor is defined twice"
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links - anchors == set(), "links to nowhere"

    def key(kind: str, name: str) -> str:
        return f"{kind}-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")

    modules = sorted(m.name for m in pkgutil.iter_modules(v1.__path__) if m.name.endswith("_pb2"))
    assert len(modules) == len(list((ROOT / "proto" / "cardmint" / "v1").glob("*.proto")))
    seen_messages = 0
    for name in modules:
        desc = importlib.import_module(f"cardmint.v1.{name}").DESCRIPTOR
        for service in desc.services_by_name.values():
            assert key("service", service.name) in anchors
            for m in service.methods:
                assert key("rpc", f"{service.name}.{m.name}") in anchors
                signature = (
                    f"`rpc {m.name}({'stream ' if m.client_streaming else ''}{m.input_type.name}) "
                    f"returns ({'stream ' if m.server_streaming else ''}{m.output_type.name})`"
                )
                assert signature in text
        for msg in desc.message_types_by_name.values():
            seen_messages += 1
            section = text.split(f'<a id="{key("message", msg.name)}"></a>', 1)[1].split("<a id=", 1)[0]
            for f in msg.fields:
                assert f"| `{f.name}` | {f.number} |" in section, f"{msg.name}.{f.name}"
        for enum in desc.enum_types_by_name.values():
            section = text.split(f'<a id="{key("enum", enum.name)}"></a>', 1)[1].split("<a id=", 1)[0]
            for v in enum.values:
                assert f"| `{v.name}` | {v.number} |" in section
    assert seen_messages > 50
