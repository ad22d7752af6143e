"""A small real IMAP4rev1 server (RFC 3501 subset) on 127.0.0.1 port 0, in a thread.

Enough for a mailbox poller: CAPABILITY, NOOP, LOGIN, SELECT/EXAMINE, (UID) SEARCH with
ALL/UNSEEN/SEEN, (UID) FETCH of BODY[] / BODY.PEEK[] / RFC822 / FLAGS / UID, (UID) STORE of
flags, EXPUNGE, LOGOUT. Messages are dropped in with :meth:`ImapServer.deliver`; the test reads
:attr:`ImapServer.mailboxes` to see what the client flagged. Synchronising literals from the
client (``{n}``) are not needed by the commands above and are refused.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
from dataclasses import dataclass, field


@dataclass
class StoredMessage:
    uid: int
    data: bytes
    flags: set[str] = field(default_factory=set)


@dataclass
class ImapState:
    users: dict[str, str]
    mailboxes: dict[str, list[StoredMessage]] = field(default_factory=lambda: {"INBOX": []})
    next_uid: int = 1
    logins: list[tuple[str, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


_FETCH_ITEMS = re.compile(r"BODY\.PEEK\[\]|BODY\[\]|RFC822|FLAGS|UID", re.IGNORECASE)


def _words(text: str) -> list[str]:
    """IMAP arguments: atoms, and quoted strings whose backslash escapes only apply inside."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == " ":
            i += 1
        elif text[i] == '"':
            j, chars = i + 1, []
            while j < len(text) and text[j] != '"':
                if text[j] == "\\" and j + 1 < len(text):
                    j += 1
                chars.append(text[j])
                j += 1
            out.append("".join(chars))
            i = j + 1
        else:
            j = text.find(" ", i)
            j = len(text) if j < 0 else j
            out.append(text[i:j])
            i = j
    return out


class _Session(asyncio.Protocol):
    def __init__(self, state: ImapState) -> None:
        self.state = state
        self.buffer = b""
        self.user: str | None = None
        self.selected: str | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send(b"* OK [CAPABILITY IMAP4rev1] test IMAP ready")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            self._command(line.decode("utf-8", "replace"))

    def _send(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.write(line + b"\r\n")

    def _command(self, line: str) -> None:
        tag, _sp, rest = line.partition(" ")
        words = _words(rest)
        if not words:
            self._send(f"{tag} BAD empty command".encode())
            return
        name, args = words[0].upper(), words[1:]
        by_uid = name == "UID"
        if by_uid:
            name, args = args[0].upper(), args[1:]
        handler = getattr(self, f"_cmd_{name.lower()}", None)
        if handler is None or (self.user is None and name not in ("CAPABILITY", "NOOP",
                                                                     "LOGIN", "LOGOUT")):
            self._send(f"{tag} BAD {name} not supported here".encode())
            return
        if "{" in rest:
            self._send(f"{tag} BAD literals are not supported by this test server".encode())
            return
        handler(tag, args, by_uid)

    # -- commands ----------------------------------------------------------------------------

    def _cmd_capability(self, tag: str, args: list[str], by_uid: bool) -> None:
        self._send(b"* CAPABILITY IMAP4rev1 UIDPLUS")
        self._send(f"{tag} OK CAPABILITY completed".encode())

    def _cmd_noop(self, tag: str, args: list[str], by_uid: bool) -> None:
        self._send(f"{tag} OK NOOP completed".encode())

    def _cmd_login(self, tag: str, args: list[str], by_uid: bool) -> None:
        user, password = [*args, "", ""][:2]
        ok = self.state.users.get(user) == password
        with self.state.lock:
            self.state.logins.append((user, ok))
        if not ok:
            self._send(f"{tag} NO [AUTHENTICATIONFAILED] invalid credentials".encode())
            return
        self.user = user
        self._send(f"{tag} OK LOGIN completed".encode())

    def _cmd_logout(self, tag: str, args: list[str], by_uid: bool) -> None:
        self._send(b"* BYE logging out")
        self._send(f"{tag} OK LOGOUT completed".encode())
        assert self.transport is not None
        self.transport.close()

    def _cmd_select(self, tag: str, args: list[str], by_uid: bool) -> None:
        name = args[0] if args else "INBOX"
        with self.state.lock:
            box = self.state.mailboxes.get(name)
            if box is None:
                self._send(f"{tag} NO no such mailbox".encode())
                return
            self.selected = name
            unseen = sum(1 for m in box if "\\Seen" not in m.flags)
            self._send(f"* {len(box)} EXISTS".encode())
            self._send(b"* 0 RECENT")
            self._send(f"* OK [UIDNEXT {self.state.next_uid}] predicted next UID".encode())
            self._send(f"* OK [UIDVALIDITY 1] UIDs valid; {unseen} unseen".encode())
            self._send(b"* FLAGS (\\Seen \\Deleted \\Flagged)")
        self._send(f"{tag} OK [READ-WRITE] SELECT completed".encode())

    _cmd_examine = _cmd_select

    def _box(self) -> list[StoredMessage]:
        assert self.selected is not None
        return self.state.mailboxes[self.selected]

    def _cmd_search(self, tag: str, args: list[str], by_uid: bool) -> None:
        if self.selected is None:
            self._send(f"{tag} BAD no mailbox selected".encode())
            return
        criteria = {a.upper() for a in args if a.upper() not in ("CHARSET", "UTF-8")}
        with self.state.lock:
            hits = []
            for seq, msg in enumerate(self._box(), start=1):
                seen = "\\Seen" in msg.flags
                if ("UNSEEN" in criteria and seen) or ("SEEN" in criteria and not seen):
                    continue
                hits.append(msg.uid if by_uid else seq)
        self._send(("* SEARCH " + " ".join(map(str, hits))).strip().encode())
        self._send(f"{tag} OK SEARCH completed".encode())

    def _select_set(self, spec: str, by_uid: bool) -> list[tuple[int, StoredMessage]]:
        box = self._box()
        wanted: set[int] = set()
        for part in spec.split(","):
            lo, _sep, hi = part.partition(":")
            top = max((m.uid if by_uid else i) for i, m in enumerate(box, 1)) if box else 0
            start = top if lo == "*" else int(lo)
            end = start if not hi else (top if hi == "*" else int(hi))
            wanted.update(range(min(start, end), max(start, end) + 1))
        return [(i, m) for i, m in enumerate(box, 1) if (m.uid if by_uid else i) in wanted]

    def _cmd_fetch(self, tag: str, args: list[str], by_uid: bool) -> None:
        if self.selected is None or len(args) < 2:
            self._send(f"{tag} BAD FETCH needs a mailbox and arguments".encode())
            return
        items = {i.upper() for i in _FETCH_ITEMS.findall(" ".join(args[1:]))}
        with self.state.lock:
            for seq, msg in self._select_set(args[0], by_uid):
                parts = [f"UID {msg.uid}"]
                if "FLAGS" in items:
                    parts.append(f"FLAGS ({' '.join(sorted(msg.flags))})")
                body = next((i for i in ("BODY[]", "BODY.PEEK[]", "RFC822") if i in items), None)
                if body is None:
                    self._send(f"* {seq} FETCH ({' '.join(parts)})".encode())
                    continue
                if body != "BODY.PEEK[]":
                    msg.flags.add("\\Seen")
                label = "RFC822" if body == "RFC822" else "BODY[]"
                head = f"* {seq} FETCH ({' '.join(parts)} {label} {{{len(msg.data)}}}"
                assert self.transport is not None
                self.transport.write(head.encode() + b"\r\n" + msg.data + b")\r\n")
        self._send(f"{tag} OK FETCH completed".encode())

    def _cmd_store(self, tag: str, args: list[str], by_uid: bool) -> None:
        if self.selected is None or len(args) < 3:
            self._send(f"{tag} BAD STORE needs a mailbox and arguments".encode())
            return
        mode = args[1].upper()
        flags = {f for f in " ".join(args[2:]).strip("()").split() if f}
        with self.state.lock:
            for seq, msg in self._select_set(args[0], by_uid):
                if mode.startswith("+"):
                    msg.flags |= flags
                elif mode.startswith("-"):
                    msg.flags -= flags
                else:
                    msg.flags = set(flags)
                if ".SILENT" not in mode:
                    self._send(f"* {seq} FETCH (UID {msg.uid} FLAGS "
                               f"({' '.join(sorted(msg.flags))}))".encode())
        self._send(f"{tag} OK STORE completed".encode())

    def _cmd_expunge(self, tag: str, args: list[str], by_uid: bool) -> None:
        with self.state.lock:
            box = self._box()
            for seq in range(len(box), 0, -1):
                if "\\Deleted" in box[seq - 1].flags:
                    del box[seq - 1]
                    self._send(f"* {seq} EXPUNGE".encode())
        self._send(f"{tag} OK EXPUNGE completed".encode())


class ImapServer:
    """The server in a background thread with its own loop; ``users`` maps login → password."""

    def __init__(self, users: dict[str, str], *, ssl_context: ssl.SSLContext | None = None
                 ) -> None:
        """``ssl_context``: implicit TLS on connect (IMAPS, as on port 993)."""
        self.ssl_context = ssl_context
        self.state = ImapState(users=dict(users))
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> ImapServer:
        self._thread.start()

        async def _serve() -> asyncio.AbstractServer:
            return await self._loop.create_server(lambda: _Session(self.state), "127.0.0.1", 0,
                                                  ssl=self.ssl_context)

        self._server = asyncio.run_coroutine_threadsafe(_serve(), self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._loop.call_soon_threadsafe(server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> ImapServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def deliver(self, data: bytes, mailbox: str = "INBOX") -> int:
        """Drop a message into ``mailbox``; return its UID."""
        with self.state.lock:
            uid = self.state.next_uid
            self.state.next_uid += 1
            self.state.mailboxes.setdefault(mailbox, []).append(StoredMessage(uid, data))
        return uid

    def flags(self, uid: int, mailbox: str = "INBOX") -> set[str]:
        with self.state.lock:
            return next(set(m.flags) for m in self.state.mailboxes[mailbox] if m.uid == uid)
