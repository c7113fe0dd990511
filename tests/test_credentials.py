"""Device credentials: tokens, stored hashes, Mosquitto's password hash."""

from __future__ import annotations

import base64
import hashlib

from telemetra.credentials import mosquitto_hash, new_token, token_hash, token_matches


def test_tokens_are_long_random_and_only_their_hash_is_compared() -> None:
    a, b = new_token(), new_token()
    assert a != b and len(a) >= 43
    assert token_matches(a, token_hash(a))
    assert not token_matches(b, token_hash(a))
    assert not token_matches(a, None)


def test_mosquitto_hash_is_pbkdf2_sha512_in_the_password_file_form() -> None:
    salt = b"0123456789ab"
    text = mosquitto_hash("s3cret", salt)
    kind, iterations, salt_b64, digest_b64 = text.split("$")[1:]
    assert (kind, iterations) == ("7", "101")
    assert base64.b64decode(salt_b64) == salt
    expected = hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, 101, 64)
    assert base64.b64decode(digest_b64) == expected
    assert mosquitto_hash("s3cret") != mosquitto_hash("s3cret")  # fresh salt each time
