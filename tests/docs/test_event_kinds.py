"""The event kinds a notifier may filter on are listed in event.proto, where client authors
read them (and so in docs/api-reference.md): the list must name every kind the server
emits, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from cardmint.server.domain.events import EventKind

ROOT = Path(__file__).resolve().parents[2]


def _listed() -> set[str]:
    text = (ROOT / "proto" / "cardmint" / "v1" / "event.proto").read_text()
    block = text.split("message SubscribeRequest", 1)[1].split("repeated string kinds", 1)[0]
    comment = " ".join(line.strip().removeprefix("//") for line in block.splitlines() if "//" in line)
    listed = comment.split("The kinds:", 1)[1].split("Any other kind", 1)[0]
    return set(re.findall(r"\b[a-z]+\.[a-z_]+\b", listed))


def test_the_proto_lists_every_event_kind_and_no_other() -> None:
    listed = _listed()
    kinds = {k.value for k in EventKind}
    assert kinds - listed == set(), "emitted but not listed in event.proto"
    assert listed - kinds == set(), "listed in event.proto but never emitted"
