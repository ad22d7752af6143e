"""DKIM signing (RFC 6376) with dkimpy: relaxed/relaxed, the headers receivers look at.

The key comes from a secret file (``MARTECH_DKIM_PRIVATE_KEY_FILE``, PEM RSA); selector and
domain are settings. Relaxed header *and* body canonicalisation survive the re-folding and
trailing-whitespace changes relays are known to make; ``simple`` body canonicalisation (dkimpy's
default) breaks on them. A header we name but a message lacks is still listed in ``h=``: that
signs its absence, so nobody can add one later (RFC 6376 §5.4.2, "over-signing").

dkimpy parses, canonicalises, selects and hashes the headers and builds the signature header;
only the RSA operation itself goes to OpenSSL (``cryptography``): dkimpy's RSA is pure Python
(two 1024-bit ``pow`` per message, ~9 ms on the CI box, a ~100 msgs/s ceiling per core).
``bench/send_throughput.py`` prints both. dkimpy stamps ``t=`` from the wall clock itself.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from scheduler.errors import MartechError
from scheduler.settings import Settings

SIGNED_HEADERS: tuple[str, ...] = (
    "From", "Reply-To", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe",
    "List-Unsubscribe-Post", "Feedback-ID", "MIME-Version", "Content-Type",
    "Content-Transfer-Encoding",
)
_SELECTOR = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
MIN_KEY_BITS = 1024  # receivers reject shorter keys; 2048 is what we generate


class DkimError(MartechError):
    """DKIM is configured but cannot be used; names the setting or file to fix."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        self.message = message
        super().__init__(f"{setting}: {message}")


class _OpenSslDKIM(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's ``DKIM`` with the RSA step done by OpenSSL; the rest is dkimpy's own code
    (``gen_header`` as in dkimpy 1.1, the ``b=`` tag computed with ``cryptography``)."""

    def __init__(self, message: bytes, key: rsa.RSAPrivateKey) -> None:
        super().__init__(message, linesep=b"\r\n")
        self._key = key

    def gen_header(self, fields: list[tuple[bytes, bytes]], include_headers: tuple[bytes, ...],
                   canon_policy: object, header_name: bytes, pk: object,
                   standardize: bool = False) -> bytes:
        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
        hasher = dkim.HashThrough(self.hasher(), False)
        headers = canon_policy.canonicalize_headers(self.headers)  # type: ignore[attr-defined]
        self.signed_headers = dkim.hash_headers(
            hasher, canon_policy, headers, include_headers, (header_name, b" " + header_value),
            dict(fields))
        signature = self._key.sign(hasher.digest(), padding.PKCS1v15(),
                                   Prehashed(hashes.SHA256()))
        idx = next(i for i, (tag, _v) in enumerate(fields) if tag == b"b")
        fields[idx] = (b"b", base64.b64encode(signature))
        value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        return bytes(dkim.fold(value, namelen=len(header_name), linesep=self.linesep))


@dataclass(frozen=True)
class DkimSigner:
    selector: str
    domain: str
    key_pem: bytes
    openssl: bool = True  # False: dkimpy's pure-Python RSA (the benchmark's comparison)

    def __repr__(self) -> str:  # the key never reaches a log line
        return f"DkimSigner(selector={self.selector!r}, domain={self.domain!r})"

    def sign(self, data: bytes) -> bytes:
        """``data`` (a whole CRLF message) with a ``DKIM-Signature`` header prepended."""
        selector, domain = self.selector.encode("ascii"), self.domain.encode("ascii")
        include = [h.encode("ascii") for h in SIGNED_HEADERS]
        if self.openssl:
            signer = _OpenSslDKIM(data, self._rsa_key)
            header = signer.sign(selector, domain, self.key_pem,
                                 canonicalize=(b"relaxed", b"relaxed"), include_headers=include)
        else:
            header = dkim.sign(data, selector, domain, self.key_pem,
                               canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
                               linesep=b"\r\n")
        return bytes(header) + data

    @cached_property
    def _rsa_key(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def txt_record(self) -> str:
        """The DNS TXT value to publish at :attr:`record_name`."""
        return dns_txt_value(self.key_pem)


def dns_txt_value(key_pem: bytes) -> str:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DkimError("MARTECH_DKIM_PRIVATE_KEY_FILE", "expected an RSA private key")
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def txt_chunks(value: str, size: int = 255) -> list[str]:
    """A TXT value longer than 255 bytes is published as several strings (RFC 7208 §3.3)."""
    return [value[i:i + size] for i in range(0, len(value), size)]


def _load_key(path: Path) -> bytes:
    setting = "MARTECH_DKIM_PRIVATE_KEY_FILE"
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise DkimError(setting, f"cannot read {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimError(setting, f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DkimError(setting, f"{path}: expected an RSA key (rsa-sha256)")
    if key.key_size < MIN_KEY_BITS:
        raise DkimError(setting, f"{path}: {key.key_size}-bit key; receivers need "
                                 f"≥ {MIN_KEY_BITS} (2048 recommended)")
    # dkimpy reads PKCS#1 or PKCS#8; hand it the traditional form it parses fastest.
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def signer_from_settings(settings: Settings) -> DkimSigner | None:
    """The configured signer, None when DKIM is off (no key file set).

    :raises DkimError: a key file without selector/domain, an unreadable or unusable key.
    """
    if settings.dkim_private_key_file is None:
        return None
    for name, value in (("MARTECH_DKIM_SELECTOR", settings.dkim_selector),
                        ("MARTECH_DKIM_DOMAIN", settings.dkim_domain)):
        if not value:
            raise DkimError(name, "required when MARTECH_DKIM_PRIVATE_KEY_FILE is set")
        if not _SELECTOR.match(value):
            raise DkimError(name, f"{value!r} is not a DNS name")
    assert settings.dkim_selector and settings.dkim_domain
    return DkimSigner(settings.dkim_selector, settings.dkim_domain.lower().rstrip("."),
                      _load_key(Path(settings.dkim_private_key_file)))


def generate_key(path: Path, bits: int = 2048) -> None:
    """Write a new RSA key readable by its owner only; refuse to overwrite one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
