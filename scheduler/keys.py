"""Which keys sign and verify links: ``MARTECH_SECRET_KEY`` and ``MARTECH_PREVIOUS_SECRET_KEYS``.

A key anyone can read (the old built-in default), an empty one or one shorter than 32 bytes lets
anyone forge links, so with ``MARTECH_PUBLIC_BASE_URL`` set such a key is refused and the service
does not start. Without a public URL nothing signed is published on the web, so when no key is
set a random one is generated once and kept in ``var/secret_key`` (mode 0600), and the log says
so. Several nodes, or a public URL, need one configured key shared by all of them.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from scheduler.delivery.tokens import MIN_KEY_BYTES, Signer
from scheduler.errors import MartechError
from scheduler.logs import redact_also
from scheduler.settings import Settings

log = logging.getLogger("martech.keys")

KEY_FILE = "secret_key"
# Values published in the source or the docs at some point: never a secret.
PUBLIC_VALUES = frozenset({"insecure-dev-key-change-me", "change-me", "changeme", "secret"})


class InsecureSecretKey(MartechError):
    """A signing key anyone could guess, with a public URL where its links are honoured."""

    def __init__(self, setting: str, why: str) -> None:
        self.setting = setting
        self.why = why
        super().__init__(
            f"{setting} {why}, and MARTECH_PUBLIC_BASE_URL is set: anyone could forge "
            f"unsubscribe and click links. Set {setting} to a random value of at least "
            f"{MIN_KEY_BYTES} bytes (`martech keygen` prints one) and give every node the same.")


@dataclass(frozen=True)
class Keys:
    current: str
    previous: tuple[str, ...] = ()
    generated: Path | None = None  # the var/ file the current key came from, if any


def generate_key() -> str:
    """A new key: 32 random bytes, base64url (43 characters)."""
    return secrets.token_urlsafe(32)


def _weakness(value: str | None) -> str | None:
    if value is None or not value.strip():
        return "is not set"
    if value.strip() in PUBLIC_VALUES:
        return "is a published default"
    if len(value.encode("utf-8")) < MIN_KEY_BYTES:
        return f"is shorter than {MIN_KEY_BYTES} bytes"
    return None


def check_keys(settings: Settings) -> None:
    """:raises InsecureSecretKey: a public URL is set and a key is weak."""
    if not settings.public_base_url:
        return
    current = settings.secret_key.get_secret_value() if settings.secret_key else None
    why = _weakness(current)
    if why is not None:
        raise InsecureSecretKey("MARTECH_SECRET_KEY", why)
    for index, old in enumerate(settings.previous_secret_keys, start=1):
        why = _weakness(old.get_secret_value())
        if why is not None:  # a weak old key verifies forged links just the same
            raise InsecureSecretKey("MARTECH_PREVIOUS_SECRET_KEYS", f"(entry {index}) {why}")


_GENERATED: dict[Path, str] = {}
_WARNED: set[str] = set()  # weak keys already warned about, once per process


def _generated_key(var_dir: Path) -> str:
    """Read ``var/secret_key``, creating it (0600, atomically) the first time."""
    path = (var_dir / KEY_FILE).resolve()
    if path in _GENERATED:
        return _GENERATED[path]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="utf-8").strip()
        created = False
    else:
        key = generate_key()
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(key + "\n")
        created = True
    if _weakness(key) is not None:
        raise MartechError(f"{path} does not hold a usable key; delete it to generate a new one")
    log.warning("MARTECH_SECRET_KEY is not set: signing links with a key %s %s (fine without "
                "MARTECH_PUBLIC_BASE_URL; set MARTECH_SECRET_KEY before publishing links, "
                "and on every node)", "generated in" if created else "kept in", path,
                extra={"action": "key_generated" if created else "key_loaded"})
    redact_also([key])
    _GENERATED[path] = key
    return key


def resolve_keys(settings: Settings) -> Keys:
    """The keys to sign and verify with.

    :raises InsecureSecretKey: see :func:`check_keys`.
    """
    check_keys(settings)
    current = settings.secret_key.get_secret_value() if settings.secret_key else None
    previous = tuple(k.get_secret_value() for k in settings.previous_secret_keys
                     if k.get_secret_value().strip())
    why = _weakness(current)
    if current is None or why in ("is not set", "is a published default"):
        path = Path(settings.var_dir) / KEY_FILE
        return Keys(_generated_key(Path(settings.var_dir)), previous, path)
    if why is not None and current not in _WARNED:
        _WARNED.add(current)
        log.warning("MARTECH_SECRET_KEY %s; acceptable only while MARTECH_PUBLIC_BASE_URL is "
                    "unset", why, extra={"action": "key_weak"})
    return Keys(current, previous)


def signer_for(settings: Settings) -> Signer:
    """The one way code gets a :class:`Signer` from the settings."""
    keys = resolve_keys(settings)
    return Signer(keys.current, keys.previous)
