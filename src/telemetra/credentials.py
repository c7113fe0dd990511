"""Device credentials: random tokens, the hash we keep, and the broker's password hash.

Device tokens are long random secrets, so a fast hash is enough to store them (argon2, about
110 ms per check, is for user passwords and would not do on the per-message path). The broker
cannot use our hash: Mosquitto's password file wants its own PBKDF2-SHA512 form, computed from
the plain token, so it is made once, when the token is issued, and kept beside ours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

MOSQUITTO_ITERATIONS = 101  # what mosquitto_passwd writes for "$7$" hashes


def new_token() -> str:
    """A device token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The stored hash of a device token."""
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored: str | None) -> bool:
    """Constant-time check of a presented token against its stored hash."""
    return stored is not None and hmac.compare_digest(token_hash(token), stored)


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """Mosquitto 2.0's ``$7$`` password-file hash (PBKDF2-HMAC-SHA512)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, MOSQUITTO_ITERATIONS, 64)
    encoded_salt = base64.b64encode(salt).decode()
    return f"$7${MOSQUITTO_ITERATIONS}${encoded_salt}${base64.b64encode(digest).decode()}"
