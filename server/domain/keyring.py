"""Key material: the digest keys (lookup of codes) and the sealing keys (viewing them again).

Both kinds are numbered. The highest-numbered sealing key seals new cards; the others stay
valid (a sealed copy names the key that sealed it). Which digest key new lots use is the
database's to say (server/domain/rekey.py: ``cardmint keys rotate``), so that every
server switches at the same moment; a code is looked up under every digest key held (and
not retired), so codes digested under the previous key are still found until ``cardmint
keys rehash`` has moved them and the old key is retired (docs/operations.md, "Key rotation").

Where the keys come from, per kind (settings in server/config.py):

* files in the keys directory (``keys_dir``, default ``VAR/keys``): ``digest.key`` (id 1)
  and ``digest-<id>.key``, ``seal-<id>.key``; 32 raw bytes each, mode 0600 (a file anyone
  but its owner may read, write or execute is refused). On first start, when a kind has no
  file, one is created. Losing the digest key makes every issued code unfindable, so an
  existing file is never overwritten.
* or the environment: ``CARDMINT_DIGEST_KEYS`` / ``CARDMINT_SEAL_KEYS`` =
  ``ID:HEX[,ID:HEX...]`` (64 hex digits a key; a bare ``HEX`` is id 1). When set, that kind
  comes from the variable only and nothing is written to disk.

Never from the command line: no flag takes key material.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .errors import KeyringError

__all__ = [
    "DIGEST_KEYS_ENV",
    "KEY_SIZE",
    "SEAL_KEYS_ENV",
    "Keyring",
    "create_key_file",
    "describe",
    "digest_key_path",
    "read_key_file",
]

KEY_SIZE = 32
DIGEST_KEYS_ENV = "CARDMINT_DIGEST_KEYS"
SEAL_KEYS_ENV = "CARDMINT_SEAL_KEYS"
_DIGEST_FILE = re.compile(r"^digest(?:-(\d+))?\.key$")
_SEAL_FILE = re.compile(r"^seal-(\d+)\.key$")
_KINDS = (("digest", DIGEST_KEYS_ENV, _DIGEST_FILE), ("seal", SEAL_KEYS_ENV, _SEAL_FILE))


def _key_path(keys_dir: Path, kind: str, key_id: int) -> Path:
    return digest_key_path(keys_dir, key_id) if kind == "digest" else keys_dir / f"seal-{key_id}.key"


def digest_key_path(keys_dir: Path, key_id: int) -> Path:
    """Where digest key ``key_id`` lives: ``digest.key`` for 1 (as before rotation existed)."""
    return keys_dir / ("digest.key" if key_id == 1 else f"digest-{key_id}.key")


def read_key_file(path: Path) -> bytes:
    """A key file's 32 bytes; refused when its mode is wider than 0600 or its size is wrong."""
    mode = path.stat().st_mode
    if mode & 0o177:
        raise KeyringError(
            f"{path} has mode {oct(stat.S_IMODE(mode))}, wider than 0600 (readable, writable or "
            f"executable by others than its owner): run chmod 600 {path}"
        )
    data = path.read_bytes()
    if len(data) != KEY_SIZE:
        raise KeyringError(f"{path} holds {len(data)} bytes, expected {KEY_SIZE}")
    return data


def create_key_file(path: Path) -> bool:
    """Write a fresh random key to ``path`` (0600) unless it exists; True if written."""
    try:
        # O_EXCL: two server processes starting together must not both write a key and
        # each keep its own; the loser reads the winner's file.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(KEY_SIZE))
        f.flush()
        os.fsync(f.fileno())
    return True


def _from_env(name: str, value: str) -> dict[int, bytes]:
    keys: dict[int, bytes] = {}
    for i, part in enumerate(p.strip() for p in value.split(",")):
        key_id_text, sep, hex_key = part.rpartition(":")
        if not sep:
            key_id_text = "1"
        if not key_id_text.isdigit() or int(key_id_text) < 1:
            raise KeyringError(f"env {name}: entry {i + 1}: the key id must be a positive integer")
        try:
            key = bytes.fromhex(hex_key)
        except ValueError:
            raise KeyringError(f"env {name}: entry {i + 1}: not hexadecimal") from None
        if len(key) != KEY_SIZE:
            raise KeyringError(f"env {name}: entry {i + 1}: {len(key)} bytes, expected {KEY_SIZE}")
        if int(key_id_text) in keys:
            raise KeyringError(f"env {name}: key id {key_id_text} given twice")
        keys[int(key_id_text)] = key
    return keys


def _ids(keys_dir: Path, pattern: re.Pattern[str]) -> list[int]:
    found = (pattern.match(p.name) for p in keys_dir.iterdir()) if keys_dir.is_dir() else iter(())
    return sorted({int(m.group(1) or 1) for m in found if m is not None})


@dataclass(frozen=True)
class Keyring:
    """``digest_keys`` / ``seal_keys``: id -> 32 bytes. ``sources``: where each kind came
    from (a directory, or ``env NAME``), for display."""

    digest_keys: Mapping[int, bytes]
    seal_keys: Mapping[int, bytes] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.digest_keys:
            raise KeyringError("no digest key")
        if not self.seal_keys:
            raise KeyringError("no sealing key")
        if any(len(k) != KEY_SIZE for k in self.digest_keys.values()):
            raise KeyringError("digest keys must be 32 bytes")
        if any(len(k) != KEY_SIZE for k in self.seal_keys.values()):
            raise KeyringError("sealing keys must be 32 bytes")
        object.__setattr__(self, "digest_keys", MappingProxyType(dict(self.digest_keys)))
        object.__setattr__(self, "seal_keys", MappingProxyType(dict(self.seal_keys)))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))

    def __repr__(self) -> str:  # never print key bytes into a log
        return (
            f"Keyring(digest_key_ids={sorted(self.digest_keys)}, "
            f"seal_key_ids={sorted(self.seal_keys)}, seal_key_id={self.seal_key_id})"
        )

    @property
    def digest_key_id(self) -> int:
        """The highest digest key id held."""
        return max(self.digest_keys)

    @property
    def digest_key(self) -> bytes:
        """The highest-numbered digest key (before any rotation, the only one). Which key new
        lots use is recorded in the database: ``Context.rotation.current``."""
        return self.digest_keys[self.digest_key_id]

    def lookup_keys(self) -> list[tuple[int, bytes]]:
        """Every digest key held, newest (highest id) first: the order lookups try them in."""
        return sorted(self.digest_keys.items(), reverse=True)

    @property
    def seal_key_id(self) -> int:
        return max(self.seal_keys)

    @property
    def seal_key(self) -> bytes:
        return self.seal_keys[self.seal_key_id]

    @classmethod
    def generate(cls) -> Keyring:
        return cls({1: secrets.token_bytes(KEY_SIZE)}, {1: secrets.token_bytes(KEY_SIZE)})

    @classmethod
    def load_or_create(cls, var_dir: Path) -> Keyring:
        """The keys under ``var_dir/keys`` (files only), created on first start."""
        return cls.load(Path(var_dir) / "keys", environ={})

    @classmethod
    def load(cls, keys_dir: Path, environ: Mapping[str, str] | None = None) -> Keyring:
        """Each kind from its environment variable when set, else from ``keys_dir`` (created,
        mode 0700, with a first key of the kind when it has none)."""
        environ = os.environ if environ is None else environ
        keys_dir = Path(keys_dir)
        kinds: dict[str, dict[int, bytes]] = {}
        sources: dict[str, str] = {}
        for kind, env, pattern in _KINDS:
            if environ.get(env):
                kinds[kind], sources[kind] = _from_env(env, environ[env]), f"env {env}"
                continue
            keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            ids = _ids(keys_dir, pattern)
            if not ids:
                create_key_file(_key_path(keys_dir, kind, 1))
                ids = _ids(keys_dir, pattern)
            kinds[kind] = {i: read_key_file(_key_path(keys_dir, kind, i)) for i in ids}
            sources[kind] = str(keys_dir)
        return cls(kinds["digest"], kinds["seal"], sources)


def describe(keys_dir: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per kind of key: ids, the current one and the source; never key bytes.
    Reads (and so checks) what exists, creates nothing; a bad key file raises KeyringError."""
    environ = os.environ if environ is None else environ
    keys_dir = Path(keys_dir)
    lines = []
    for kind, env, pattern in _KINDS:
        if environ.get(env):
            ids = sorted(_from_env(env, environ[env]))
            source = f"env {env} (****)"
        else:
            ids = _ids(keys_dir, pattern)
            for i in ids:
                read_key_file(_key_path(keys_dir, kind, i))
            source = str(keys_dir)
        if not ids:
            lines.append(f"{kind} keys: none yet (created in {keys_dir} on first start)")
        else:
            listed = ", ".join(map(str, ids))
            which = "current: see cardmint keys status" if kind == "digest" else f"current {max(ids)}"
            lines.append(f"{kind} keys: {listed} ({which}) from {source}")
    return lines
