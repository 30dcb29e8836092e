"""Optional API-key auth: bearer keys from an environment variable or a mounted secret file."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from serving.config import AuthConfig


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _read_keys(env: str, file: str | None) -> set[str]:
    keys = {k.strip() for k in os.environ.get(env, "").split(",")}
    if file:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"auth: key file {file} does not exist")
        keys |= {line.strip() for line in path.read_text().splitlines()}
    return {k for k in keys if k and not k.startswith("#")}


class Keys:
    """The accepted keys; admin keys are accepted everywhere, plain keys except for admin."""

    def __init__(self, enabled: bool, keys: set[str], admin_keys: set[str]) -> None:
        self.enabled = enabled
        self._keys = keys | admin_keys
        self._admin = admin_keys

    @classmethod
    def from_config(cls, auth: AuthConfig) -> Keys:
        if not auth.enabled:
            return cls(False, set(), set())
        keys = _read_keys(auth.keys_env, auth.keys_file)
        admin = _read_keys(auth.admin_keys_env, auth.admin_keys_file)
        if not keys and not admin:
            raise ValueError(
                f"auth is enabled but no keys were found: set ${auth.keys_env} (comma-separated) "
                "or auth.keys_file"
            )
        return cls(True, keys, admin)

    def check(self, authorization: str | None, *, admin: bool) -> None:
        """Raise `AuthError` (401 without a valid key, 403 when an admin key is needed)."""
        if not self.enabled:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError(401, "missing API key: send the header 'Authorization: Bearer <key>'")
        key = key.strip()
        if not any(hmac.compare_digest(key, k) for k in self._keys):
            raise AuthError(401, "invalid API key")
        if admin and not any(hmac.compare_digest(key, k) for k in self._admin):
            raise AuthError(403, "this endpoint needs an admin key")
