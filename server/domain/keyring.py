"""Key material: the digest key (lookup of codes) and the sealing keys (viewing them again).

Kept in files under the server's var directory, created on first start when none exist,
readable by the owner only. Losing the digest key makes every issued code unfindable, so
an existing file is never overwritten.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .errors import KeyringError

__all__ = ["KEY_SIZE", "Keyring"]

KEY_SIZE = 32


def _read_or_create(path: Path) -> bytes:
    try:
        # O_EXCL: two server processes starting together must not both write a key and
        # each keep its own; the loser reads the winner's file.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_SIZE))
            f.flush()
            os.fsync(f.fileno())
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyringError(
            f"{path} is accessible by group or others (mode {oct(mode & 0o777)}); chmod 600 it"
        )
    data = path.read_bytes()
    if len(data) != KEY_SIZE:
        raise KeyringError(f"{path} holds {len(data)} bytes, expected {KEY_SIZE}")
    return data


@dataclass(frozen=True)
class Keyring:
    digest_key: bytes
    seal_keys: Mapping[int, bytes] = field(default_factory=dict)
    seal_key_id: int = 1

    def __post_init__(self) -> None:
        if len(self.digest_key) != KEY_SIZE:
            raise KeyringError("digest key must be 32 bytes")
        if self.seal_key_id not in self.seal_keys:
            raise KeyringError(f"no sealing key with id {self.seal_key_id}")
        if any(len(k) != KEY_SIZE for k in self.seal_keys.values()):
            raise KeyringError("sealing keys must be 32 bytes")
        object.__setattr__(self, "seal_keys", MappingProxyType(dict(self.seal_keys)))

    def __repr__(self) -> str:  # never print key bytes into a log
        return f"Keyring(seal_key_ids={sorted(self.seal_keys)}, seal_key_id={self.seal_key_id})"

    @property
    def seal_key(self) -> bytes:
        return self.seal_keys[self.seal_key_id]

    @classmethod
    def generate(cls) -> Keyring:
        return cls(secrets.token_bytes(KEY_SIZE), {1: secrets.token_bytes(KEY_SIZE)})

    @classmethod
    def load_or_create(cls, var_dir: Path) -> Keyring:
        """``var_dir/keys/digest.key`` and ``seal-<id>.key``; the highest id seals new cards."""
        keys = Path(var_dir) / "keys"
        keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        digest = _read_or_create(keys / "digest.key")
        found = sorted(keys.glob("seal-*.key"))
        ids = [int(p.stem.removeprefix("seal-")) for p in found if p.stem.removeprefix("seal-").isdigit()]
        if not ids:
            ids = [1]
        seal = {i: _read_or_create(keys / f"seal-{i}.key") for i in ids}
        return cls(digest, seal, max(ids))
