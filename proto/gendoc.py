"""Write docs/api-reference.md from the comments in proto/cardmint/v1/*.proto.

    python proto/gendoc.py          # (re)write docs/api-reference.md
    python proto/gendoc.py --check  # exit 1, with a diff, when the committed file is stale

The .proto files are parsed by protoc itself (``grpc_tools.protoc --descriptor_set_out
--include_source_info --include_imports``), not by pattern matching: the descriptor set holds
every service, method, message, field, oneof, enum and value, and its SourceCodeInfo the
comment written above (or after) each of them, with the line it sits on.

Every element must carry a comment, and every file a header comment above ``syntax``: the
generator names each undocumented element (file:line) and fails, so the reference cannot
lose a description without the lint failing.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent
SOURCES = ROOT / "cardmint" / "v1"
OUT = ROOT.parent / "docs" / "api-reference.md"
PACKAGE = "cardmint.v1"

# Field numbers of descriptor.proto, the steps of a SourceCodeInfo.Location path.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE, _FILE_SYNTAX = 4, 5, 6, 12
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    _F.TYPE_DOUBLE: "double",
    _F.TYPE_FLOAT: "float",
    _F.TYPE_INT64: "int64",
    _F.TYPE_UINT64: "uint64",
    _F.TYPE_INT32: "int32",
    _F.TYPE_FIXED64: "fixed64",
    _F.TYPE_FIXED32: "fixed32",
    _F.TYPE_BOOL: "bool",
    _F.TYPE_STRING: "string",
    _F.TYPE_BYTES: "bytes",
    _F.TYPE_UINT32: "uint32",
    _F.TYPE_SFIXED32: "sfixed32",
    _F.TYPE_SFIXED64: "sfixed64",
    _F.TYPE_SINT32: "sint32",
    _F.TYPE_SINT64: "sint64",
}
# Types from outside the package, linked to their own documentation.
_WELL_KNOWN = "https://protobuf.dev/reference/protobuf/google.protobuf/"


class GendocError(Exception):
    """The .proto files cannot be documented: protoc failed, or elements lack comments."""


@dataclass
class Comments:
    """The comments of one file, by SourceCodeInfo path."""

    file: str
    by_path: dict[tuple[int, ...], descriptor_pb2.SourceCodeInfo.Location]
    missing: list[str] = field(default_factory=list)

    def text(self, path: tuple[int, ...]) -> str:
        loc = self.by_path.get(path)
        if loc is None:
            return ""
        raw = loc.leading_comments or loc.trailing_comments
        if not raw.strip() and path == (_FILE_SYNTAX,):
            raw = loc.leading_detached_comments[0] if loc.leading_detached_comments else ""
        lines = [ln[1:] if ln.startswith(" ") else ln for ln in raw.strip("\n").split("\n")]
        return "\n".join(lines).strip()

    def need(self, path: tuple[int, ...], what: str) -> str:
        """The comment at ``path``; an undocumented element is recorded as missing."""
        text = self.text(path)
        if not text:
            loc = self.by_path.get(path)
            line = f":{loc.span[0] + 1}" if loc is not None and loc.span else ""
            self.missing.append(f"{self.file}{line}: {what} has no comment")
        return text


def descriptor_set(sources: Path) -> descriptor_pb2.FileDescriptorSet:
    """protoc's parse of every .proto under ``sources`` (a ``cardmint/v1`` directory)."""
    root = sources.parent.parent
    protos = sorted(p.relative_to(root).as_posix() for p in sources.glob("*.proto"))
    if not protos:
        raise GendocError(f"no .proto files in {sources}")
    with tempfile.TemporaryDirectory(prefix="cardmint-gendoc-") as tmp:
        out = Path(tmp) / "api.pb"
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(root),
            f"--descriptor_set_out={out}",
            "--include_source_info",
            "--include_imports",
            *protos,
        ]
        run = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)  # noqa: S603
        if run.returncode != 0:
            raise GendocError(f"protoc failed:\n{run.stderr}")
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
    return fds


# -- the model: what the page shows, gathered from the descriptors --------------------------


@dataclass
class FieldDoc:
    name: str
    number: int
    type_md: str
    label: str
    comment: str


@dataclass
class EnumDoc:
    name: str  # dotted within the package: "Order.Status" for a nested enum
    comment: str
    values: list[tuple[str, int, str]]


@dataclass
class MessageDoc:
    name: str
    comment: str
    fields: list[FieldDoc]
    oneofs: list[tuple[str, str]]


@dataclass
class MethodDoc:
    name: str
    request: str  # full type names, without the leading dot
    response: str
    client_streaming: bool
    server_streaming: bool
    comment: str


@dataclass
class ServiceDoc:
    name: str
    comment: str
    methods: list[MethodDoc]


@dataclass
class FileDoc:
    name: str  # "keys.proto"
    comment: str
    services: list[ServiceDoc] = field(default_factory=list)
    messages: list[MessageDoc] = field(default_factory=list)
    enums: list[EnumDoc] = field(default_factory=list)


def anchor(kind: str, name: str) -> str:
    """The link target of a service, call, message or enum: ``message-order-line``."""
    return f"{kind}-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class Model:
    def __init__(self, fds: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: set[str] = set()
        for f in fds.file:
            self._index(f.package, f.message_type, f.enum_type)
        self.files: list[FileDoc] = []
        self.missing: list[str] = []
        # full type name -> the places that use it, as markdown links
        self.used_by: dict[str, set[tuple[str, str]]] = {}
        for f in fds.file:
            if f.package == PACKAGE:
                self.files.append(self._file(f))
        self.files.sort(key=lambda d: (d.name != "common.proto", d.name))

    def _index(
        self,
        prefix: str,
        messages: Iterable[descriptor_pb2.DescriptorProto],
        enums: Iterable[descriptor_pb2.EnumDescriptorProto],
    ) -> None:
        for e in enums:
            self.enums.add(f"{prefix}.{e.name}")
        for m in messages:
            full = f"{prefix}.{m.name}"
            self.messages[full] = m
            self._index(full, m.nested_type, m.enum_type)

    def _use(self, type_name: str, kind: str, name: str) -> None:
        self.used_by.setdefault(type_name, set()).add((name, anchor(kind, name)))

    def link(self, type_name: str) -> str:
        """Markdown for a full type name (no leading dot): a link into this page, or to the
        protobuf documentation for a well-known type."""
        if type_name.startswith(PACKAGE + "."):
            short = type_name.removeprefix(PACKAGE + ".")
            kind = "enum" if type_name in self.enums else "message"
            return f"[{short}](#{anchor(kind, short)})"
        if type_name.startswith("google.protobuf."):
            short = type_name.removeprefix("google.protobuf.")
            return f"[{type_name}]({_WELL_KNOWN}#{short.lower()})"
        return f"`{type_name}`"

    def _type(self, f: descriptor_pb2.FieldDescriptorProto) -> tuple[str, list[str]]:
        """(markdown type, the full names it refers to)."""
        if f.type in _SCALARS:
            return f"`{_SCALARS[f.type]}`", []
        name = f.type_name.lstrip(".")
        entry = self.messages.get(name)
        if entry is not None and entry.options.map_entry:
            k, v = self._type(entry.field[0]), self._type(entry.field[1])
            return f"map<{k[0]}, {v[0]}>", k[1] + v[1]
        return self.link(name), [name]

    def _file(self, f: descriptor_pb2.FileDescriptorProto) -> FileDoc:
        name = Path(f.name).name
        c = Comments(f.name, {tuple(loc.path): loc for loc in f.source_code_info.location})
        doc = FileDoc(name, c.need((_FILE_SYNTAX,), f"file {name} (a header comment above `syntax`)"))
        for i, s in enumerate(f.service):
            sp = (_FILE_SERVICE, i)
            methods = []
            for j, m in enumerate(s.method):
                methods.append(
                    MethodDoc(
                        m.name,
                        m.input_type.lstrip("."),
                        m.output_type.lstrip("."),
                        m.client_streaming,
                        m.server_streaming,
                        c.need((*sp, _SERVICE_METHOD, j), f"rpc {s.name}.{m.name}"),
                    )
                )
                for t in (m.input_type, m.output_type):
                    self._use(t.lstrip("."), "rpc", f"{s.name}.{m.name}")
            doc.services.append(ServiceDoc(s.name, c.need(sp, f"service {s.name}"), methods))
        self._messages(c, doc, "", (_FILE_MESSAGE,), f.message_type)
        self._enums(c, doc, "", (_FILE_ENUM,), f.enum_type)
        self.missing.extend(c.missing)
        return doc

    def _enums(
        self,
        c: Comments,
        doc: FileDoc,
        prefix: str,
        path: tuple[int, ...],
        enums: Sequence[descriptor_pb2.EnumDescriptorProto],
    ) -> None:
        for i, e in enumerate(enums):
            ep = (*path, i)
            full = prefix + e.name
            values = [
                (v.name, v.number, c.need((*ep, _ENUM_VALUE, j), f"enum value {full}.{v.name}"))
                for j, v in enumerate(e.value)
            ]
            doc.enums.append(EnumDoc(full, c.need(ep, f"enum {full}"), values))

    def _messages(
        self,
        c: Comments,
        doc: FileDoc,
        prefix: str,
        path: tuple[int, ...],
        messages: Sequence[descriptor_pb2.DescriptorProto],
    ) -> None:
        for i, m in enumerate(messages):
            if m.options.map_entry:
                continue  # shown as map<K, V> on its field
            mp = (*path, i)
            full = prefix + m.name
            fields = []
            for j, f in enumerate(m.field):
                type_md, refs = self._type(f)
                for r in refs:
                    self._use(r, "message", full)
                if f.label == _F.LABEL_REPEATED and not type_md.startswith("map<"):
                    label = "repeated"
                elif f.proto3_optional:
                    label = "optional"
                elif f.HasField("oneof_index"):
                    label = f"oneof `{m.oneof_decl[f.oneof_index].name}`"
                else:
                    label = ""
                comment = c.need((*mp, _MSG_FIELD, j), f"field {full}.{f.name}")
                fields.append(FieldDoc(f.name, f.number, type_md, label, comment))
            synthetic = {f.oneof_index for f in m.field if f.proto3_optional}
            oneofs = [
                (o.name, c.need((*mp, _MSG_ONEOF, k), f"oneof {full}.{o.name}"))
                for k, o in enumerate(m.oneof_decl)
                if k not in synthetic
            ]
            doc.messages.append(MessageDoc(full, c.need(mp, f"message {full}"), fields, oneofs))
            self._messages(c, doc, full + ".", (*mp, _MSG_NESTED), m.nested_type)
            self._enums(c, doc, full + ".", (*mp, _MSG_ENUM), m.enum_type)


# -- markdown --------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """A comment as one table cell: paragraphs kept apart, pipes escaped."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return "<br><br>".join(p for p in paras if p).replace("|", "\\|")


def _block(text: str) -> list[str]:
    """A comment as markdown paragraphs; runs of indented lines (a hand-aligned table in the
    comment) are kept as they are, in a fenced block."""
    out: list[str] = []
    fenced = False
    for line in text.split("\n"):
        indented = line.startswith("  ")
        if indented != fenced:
            if out and out[-1] and not fenced:
                out.append("")
            out.append("```text" if indented else "```")
            if fenced:
                out.append("")
            fenced = indented
        out.append(line)
    if fenced:
        out.append("```")
    return [*out, ""]


def render(model: Model) -> str:
    out = [
        f"# API reference (`{PACKAGE}`)",
        "",
        "<!-- Generated by proto/gendoc.py from the comments in proto/cardmint/v1/*.proto: do not",
        "     edit. Change the .proto comments, then run `python proto/gendoc.py`; `make lint`",
        "     runs `proto/gendoc.py --check`, which fails when this file is stale. -->",
        "",
        "Every service, call, message, field and enum value of the gRPC API, as documented in",
        "the `.proto` files under `proto/cardmint/v1/`. The rules every call follows",
        "(authentication, money, packed strings, paging, idempotency) and the table of error",
        "reasons are in [api.md](api.md).",
        "",
        "## Contents",
        "",
    ]
    for f in model.files:
        parts = [f"[{s.name}](#{anchor('service', s.name)})" for s in f.services]
        parts += [f"[{m.name}](#{anchor('message', m.name)})" for m in f.messages]
        parts += [f"[{e.name}](#{anchor('enum', e.name)})" for e in f.enums]
        out.append(f"* [`{f.name}`](#{anchor('file', f.name)}): " + ", ".join(parts))
    out.append("")
    for f in model.files:
        out += [f'<a id="{anchor("file", f.name)}"></a>', "", f"## {f.name}", ""]
        out += _block(f.comment)
        for s in f.services:
            out += _service(model, s)
        for m in f.messages:
            out += _message(model, m)
        for e in f.enums:
            out += _enum(model, e)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def _stream(streaming: bool, type_name: str, model: Model) -> str:
    return ("stream " if streaming else "") + model.link(type_name)


def _used_by(model: Model, full: str) -> list[str]:
    users = sorted(model.used_by.get(full, ()))
    if not users:
        return []
    return ["Used by: " + ", ".join(f"[{n}](#{a})" for n, a in users) + ".", ""]


def _service(model: Model, s: ServiceDoc) -> list[str]:
    out = [f'<a id="{anchor("service", s.name)}"></a>', "", f"### {s.name}", ""]
    out += _block(s.comment)
    out += ["| call | request | response | summary |", "|---|---|---|---|"]
    for m in s.methods:
        first = re.split(r"(?<=[.!?])\s+(?=[A-Z`])", _cell(m.comment).split("<br>")[0])[0]
        out.append(
            f"| [{m.name}](#{anchor('rpc', f'{s.name}.{m.name}')}) "
            f"| {_stream(m.client_streaming, m.request, model)} "
            f"| {_stream(m.server_streaming, m.response, model)} | {first} |"
        )
    out.append("")
    for m in s.methods:
        req = ("stream " if m.client_streaming else "") + m.request.removeprefix(PACKAGE + ".")
        resp = ("stream " if m.server_streaming else "") + m.response.removeprefix(PACKAGE + ".")
        out += [
            f'<a id="{anchor("rpc", f"{s.name}.{m.name}")}"></a>',
            "",
            f"#### {s.name}.{m.name}",
            "",
            f"`rpc {m.name}({req}) returns ({resp})`",
            "",
            f"Request: {_stream(m.client_streaming, m.request, model)}; "
            f"response: {_stream(m.server_streaming, m.response, model)}.",
            "",
        ]
        out += _block(m.comment)
    return out


def _message(model: Model, m: MessageDoc) -> list[str]:
    out = [f'<a id="{anchor("message", m.name)}"></a>', "", f"### {m.name}", ""]
    out += _block(m.comment)
    if m.fields:
        out += ["| field | # | type | label | description |", "|---|---|---|---|---|"]
        for f in m.fields:
            out.append(f"| `{f.name}` | {f.number} | {f.type_md} | {f.label} | {_cell(f.comment)} |")
        out.append("")
    else:
        out += ["No fields.", ""]
    for name, comment in m.oneofs:
        out += [f"oneof `{name}`: {_cell(comment)}", ""]
    out += _used_by(model, f"{PACKAGE}.{m.name}")
    return out


def _enum(model: Model, e: EnumDoc) -> list[str]:
    out = [f'<a id="{anchor("enum", e.name)}"></a>', "", f"### enum {e.name}", ""]
    out += _block(e.comment)
    out += ["| value | # | description |", "|---|---|---|"]
    out += [f"| `{n}` | {num} | {_cell(c)} |" for n, num, c in e.values]
    out.append("")
    out += _used_by(model, f"{PACKAGE}.{e.name}")
    return out


def generate(sources: Path = SOURCES) -> str:
    """The reference page for the .proto files under ``sources``; GendocError when one of
    their elements has no comment."""
    model = Model(descriptor_set(sources))
    if model.missing:
        raise GendocError(
            f"{len(model.missing)} undocumented element(s) in the .proto files "
            "(every element needs a comment):\n  " + "\n  ".join(model.missing)
        )
    return render(model)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail (exit 1) when the committed page is stale")
    ap.add_argument("--sources", type=Path, default=SOURCES, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=OUT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        fresh = generate(args.sources)
    except GendocError as e:
        print(f"gendoc.py: {e}", file=sys.stderr)
        return 1
    shown = args.out.relative_to(ROOT.parent) if args.out.is_relative_to(ROOT.parent) else args.out
    old = args.out.read_text() if args.out.exists() else ""
    if args.check:
        if old == fresh:
            print(f"gendoc.py: {shown} matches the .proto files")
            return 0
        diff = difflib.unified_diff(
            old.splitlines(keepends=True),
            fresh.splitlines(keepends=True),
            f"committed/{shown}",
            f"generated/{shown}",
        )
        sys.stderr.writelines(list(diff)[:60])
        print(
            f"gendoc.py: {shown} is out of date with the .proto comments; run python proto/gendoc.py",
            file=sys.stderr,
        )
        return 1
    if old != fresh:
        args.out.write_text(fresh)
    print(f"gendoc.py: wrote {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
