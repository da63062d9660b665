"""Deployment env values sealed at rest: AES-256-GCM under the data dir's own key file.

The registry file holds each value as ``mp1:<base64url(nonce ‖ ciphertext ‖ tag)>`` with the
variable's name as associated data (a value cannot be moved to another name unnoticed); names
stay in clear, since every reader of a deployment sees them (``env_keys``). The key is 32 random
bytes in ``<data dir>/secret.key`` (mode 0600), made at the first start that needs it: whoever
can read that file and the registry can read the values, which is why a replica's sandbox keeps
it off the data dir, and why a backup of the registry needs the key beside it. Servers sharing
one registry (PostgreSQL) share one key: MODELPORT_SECRET_KEY_FILE names it (a mounted secret),
and the registry's key check (`deployments.check_key`) refuses a server whose key is another.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "mp1:"
KEY_BYTES = 32
NONCE_BYTES = 12  # random per value: 2^32 values under one key stay far from a repeat


class SealError(RuntimeError):
    """A sealed value that this data dir's key does not open (the key was replaced or lost)."""


def load_key(path: Path, *, create: bool = True) -> bytes:
    """The key in ``path``; made (0600, exclusively) when there is none, if ``create`` (a key
    named by MODELPORT_SECRET_KEY_FILE is the one every server shares: never made here). Blocking.
    """
    if not create:
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise SealError(
                f"the secret key file {path} cannot be read ({exc.strerror}): it must hold the "
                f"{KEY_BYTES}-byte key every server of the registry shares"
            ) from None
        if len(key) != KEY_BYTES:
            raise SealError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key")
        return key
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise SealError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key") from None
        return key
    key = secrets.token_bytes(KEY_BYTES)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


class Sealer:
    """Seals env values for the registry; opens them for a replica or a carried-over deployment."""

    def __init__(self, key: bytes, where: str = "the data dir's secret.key") -> None:
        self._aead, self.where = AESGCM(key), where

    @classmethod
    def for_data_dir(cls, path: Path, *, create: bool = True) -> Sealer:
        return cls(load_key(path, create=create), str(path))

    def seal(self, name: str, value: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        box = self._aead.encrypt(nonce, value.encode(), name.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + box).decode()

    def unseal(self, name: str, sealed: str) -> str:
        if not sealed.startswith(PREFIX):
            raise SealError(f"the value of {name} is not sealed")
        try:
            raw = base64.urlsafe_b64decode(sealed[len(PREFIX) :])
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], name.encode()).decode()
        except (InvalidTag, ValueError):
            raise SealError(
                f"the value of {name} does not open with {self.where} (was the key "
                "replaced? put back the one the registry was written with)"
            ) from None

    def seal_env(self, env: dict[str, str]) -> dict[str, str]:
        return {name: self.seal(name, value) for name, value in env.items()}

    def unseal_env(self, env: dict[str, str]) -> dict[str, str]:
        return {name: self.unseal(name, value) for name, value in env.items()}
