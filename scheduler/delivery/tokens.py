"""HMAC-signed tokens for links in e-mails (ARCHITECTURE.md, invariant 9): unsubscribe, click, open.

A token is one canonical, unpadded base64url string of

    version (1 byte) | key id (3 bytes) | payload | MAC (16 bytes)

where the MAC is HMAC-SHA256 over a purpose string and everything before it, so a click token
can never be replayed as an unsubscribe token. Decoding is strict: only the base64url alphabet,
no padding, and the one canonical spelling of the bytes (the unused low bits of the last
character must be zero), so every one-character change of a token is refused, not just most.
There is one verification path, :meth:`Signer.verify`, for every purpose.

Keys rotate: the current key signs, previous keys still verify; the key id (derived from the key,
never configured) says which key made a token, so verification tries exactly one key.

Tokens carry no personal data: they name a delivery (a row id), or for a test message a scope
and a random id. The address is looked up server side, and so disappears with ``martech forget``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

VERSION = 1
KEY_ID_BYTES = 3
MAC_BYTES = 16  # 128 bits: far beyond guessing, short enough for a URL
MIN_KEY_BYTES = 32
_HEAD = 1 + KEY_ID_BYTES
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_DIGITS = re.compile(r"^[1-9][0-9]{0,17}$")  # a row id, canonical: no sign, no leading zero

UNSUBSCRIBE = "unsubscribe"
CLICK = "click"
OPEN = "open"
_SAFE_SCHEMES = ("http", "https")

# Every key id a Signer of this process holds: log redaction recognises tokens by them.
_KNOWN_KEY_IDS: set[bytes] = set()


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode_strict(text: str) -> bytes | None:
    """The bytes of a canonical unpadded base64url string; None for anything else."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Non-zero unused bits in the last character decode to the same bytes: refuse them.
    return raw if b64encode(raw) == text else None


def key_id(key: bytes) -> bytes:
    """A short public name of a key: which key signed a token, without trying them all."""
    return hashlib.sha256(b"martech-key-id\x00" + key).digest()[:KEY_ID_BYTES]


def _as_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


class Signer:
    """Signs with the current key; verifies with the current and every previous key."""

    def __init__(self, secret: str | bytes, previous: Iterable[str | bytes] = ()) -> None:
        keys = [_as_bytes(secret), *(_as_bytes(k) for k in previous)]
        if not keys[0]:
            raise ValueError("a Signer needs a non-empty key")
        self._kid = key_id(keys[0])
        self._keys: dict[bytes, bytes] = {}
        for key in keys:
            kid = key_id(key)
            if self._keys.get(kid, key) != key:  # 1 in 16M; say so rather than mis-verify
                raise ValueError("two configured keys share a key id; generate another key")
            self._keys.setdefault(kid, key)
        _KNOWN_KEY_IDS.update(self._keys)

    @property
    def key_id(self) -> str:
        """The current key's id, hex (what ``martech keygen`` and the logs call it)."""
        return self._kid.hex()

    @property
    def key_ids(self) -> list[str]:
        """Every key this signer verifies with, current first."""
        return [kid.hex() for kid in self._keys]

    def _mac(self, key: bytes, purpose: str, signed: bytes) -> bytes:
        msg = b"martech-token\x00" + purpose.encode("utf-8") + b"\x00" + signed
        return hmac.new(key, msg, hashlib.sha256).digest()[:MAC_BYTES]

    def sign_bytes(self, purpose: str, payload: bytes) -> str:
        signed = bytes([VERSION]) + self._kid + payload
        return b64encode(signed + self._mac(self._keys[self._kid], purpose, signed))

    def verify_bytes(self, purpose: str, token: str) -> bytes | None:
        """The payload if ``token`` is genuine for ``purpose`` (any configured key), else None."""
        raw = b64decode_strict(token)
        if raw is None or len(raw) < _HEAD + MAC_BYTES or raw[0] != VERSION:
            return None
        key = self._keys.get(raw[1:_HEAD])
        if key is None:
            return None
        signed, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(key, purpose, signed)):
            return None
        return signed[_HEAD:]

    def sign(self, purpose: str, payload: str) -> str:
        return self.sign_bytes(purpose, payload.encode("utf-8"))

    def verify(self, purpose: str, token: str) -> str | None:
        """The payload if the token is genuine for ``purpose``, else None."""
        raw = self.verify_bytes(purpose, token)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def digest(self, purpose: str, data: str, kid: str | None = None) -> str | None:
        """A keyed hash of ``data`` (hex) under key ``kid`` (default: the current key); None
        when this signer does not hold that key. Used to pseudonymise, never to sign."""
        key = self._keys.get(bytes.fromhex(kid)) if kid is not None else self._keys[self._kid]
        if key is None:
            return None
        msg = b"martech-digest\x00" + purpose.encode("utf-8") + b"\x00" + data.encode("utf-8")
        return hmac.new(key, msg, hashlib.sha256).hexdigest()


def looks_like_token(text: str) -> bool:
    """Is ``text`` a token made by a key this process holds? (log redaction)"""
    raw = b64decode_strict(text)
    return (raw is not None and len(raw) >= _HEAD + MAC_BYTES and raw[0] == VERSION
            and raw[1:_HEAD] in _KNOWN_KEY_IDS)


def _row_id(text: str) -> int | None:
    return int(text) if _DIGITS.match(text) else None


# -- unsubscribe -------------------------------------------------------------------------------

@dataclass(frozen=True)
class UnsubscribeRef:
    """What an unsubscribe token names: a delivery, or (a test message) a scope and a random id."""

    delivery_id: int | None = None
    scope: str | None = None
    nonce: str | None = None


def unsubscribe_token(signer: Signer, delivery_id: int) -> str:
    return signer.sign(UNSUBSCRIBE, f"d{delivery_id}")


def scope_unsubscribe_token(signer: Signer, scope: str) -> str:
    """For a message that is no delivery (``send-test``, ``preview``): it unsubscribes no one."""
    return signer.sign(UNSUBSCRIBE, f"s{secrets.token_hex(8)}\x1f{scope}")


def verify_unsubscribe(signer: Signer, token: str) -> UnsubscribeRef | None:
    payload = signer.verify(UNSUBSCRIBE, token)
    if payload is None:
        return None
    tag, body = payload[:1], payload[1:]
    if tag == "d":
        delivery = _row_id(body)
        return UnsubscribeRef(delivery_id=delivery) if delivery is not None else None
    nonce, sep, scope = body.partition("\x1f")
    if tag == "s" and sep and re.fullmatch(r"[0-9a-f]{16}", nonce):
        return UnsubscribeRef(scope=scope, nonce=nonce)
    return None


# -- click and open ----------------------------------------------------------------------------

def safe_target(url: str) -> bool:
    """Only absolute http(s) URLs without whitespace/control characters may be redirected to."""
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        return False
    scheme, sep, rest = url.partition("://")
    return bool(sep) and scheme.lower() in _SAFE_SCHEMES and rest[:1] not in ("", "/")


def click_token(signer: Signer, delivery_id: int, url: str) -> str:
    if not safe_target(url):
        raise ValueError("only http(s) links can be tracked")
    return signer.sign(CLICK, f"{delivery_id}\x1f{url}")


def verify_click(signer: Signer, token: str) -> tuple[int, str] | None:
    """``(delivery_id, url)`` from a genuine click token whose URL is safe to redirect to."""
    payload = signer.verify(CLICK, token)
    if payload is None:
        return None
    delivery, sep, url = payload.partition("\x1f")
    delivery_id = _row_id(delivery)
    if not sep or delivery_id is None or not safe_target(url):
        return None
    return delivery_id, url


def open_token(signer: Signer, delivery_id: int) -> str:
    return signer.sign(OPEN, str(delivery_id))


def verify_open(signer: Signer, token: str) -> int | None:
    payload = signer.verify(OPEN, token)
    return _row_id(payload) if payload is not None else None
