"""The ends of the pipeline: file, console, SMTP (real aiosmtpd), and notifications."""

from __future__ import annotations

import email
import io
from email.policy import default as default_policy
from pathlib import Path

import pytest

from scheduler.delivery.base import OutgoingMessage
from scheduler.delivery.console import ConsoleTransport
from scheduler.delivery.factory import make_transport
from scheduler.delivery.file import FileTransport
from scheduler.delivery.notify import build_notification
from scheduler.delivery.smtp import SmtpOptions, SmtpTransport, classify
from scheduler.errors import HeaderInjectionError
from scheduler.settings import Settings
from tests.smtp_server import RecordingHandler, SmtpServer


def _note(to: str = "it@acme.example") -> OutgoingMessage:
    return build_notification(from_="Martech Guard <guard@acme.example>", to=to,
                              subject="Website is DOWN — ça arrive", text="body\n.\nend",
                              html="<p>body</p>", headers={"X-Martech-Topic": "alert"})


def test_notification_parses_back_with_headers_and_parts() -> None:
    msg = _note()
    parsed = email.message_from_bytes(msg.data, policy=default_policy)
    assert parsed["Subject"] == "Website is DOWN — ça arrive"
    assert parsed["To"] == "it@acme.example"
    assert parsed["X-Martech-Topic"] == "alert"
    assert parsed["Message-ID"] == f"<{msg.message_id}>"
    assert msg.envelope_from == "guard@acme.example"
    assert msg.recipients == ("it@acme.example",)
    body = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert body.replace("\r\n", "\n").startswith("body\n.\nend")
    assert b"\r\n" in msg.data and b"\n" not in msg.data.replace(b"\r\n", b"")


@pytest.mark.parametrize("field", ["subject", "to", "header"])
def test_notification_refuses_header_injection(field: str) -> None:
    evil = "x\r\nBcc: victim@example.com"
    kwargs = {"from_": "a@acme.example", "to": "b@acme.example", "subject": "s", "text": "t"}
    if field == "header":
        kwargs["headers"] = {"X-Test": evil}  # type: ignore[assignment]
    else:
        kwargs[field] = evil
    with pytest.raises(HeaderInjectionError):
        build_notification(**kwargs)  # type: ignore[arg-type]


async def test_file_transport_writes_one_eml_per_message_atomically(tmp_path: Path) -> None:
    transport = FileTransport(tmp_path)
    msg = _note()
    bulk = OutgoingMessage("a@acme.example", ("b@x.example",), b"Subject: x\r\n\r\nhi\r\n",
                           "m1@acme.example", campaign="digest", run_id=7, delivery_id=42)
    assert (await transport.send(msg)).ok
    assert (await transport.send(bulk)).ok
    assert (tmp_path / "digest" / "7" / "42.eml").read_bytes() == bulk.data
    notes = list((tmp_path / "_notifications" / "adhoc").iterdir())
    assert [p.suffix for p in notes] == [".eml"]  # no temp file left behind
    assert notes[0].read_bytes() == msg.data


async def test_console_transport_prints_envelope_and_message() -> None:
    out = io.StringIO()
    assert (await ConsoleTransport(out).send(_note())).ok
    assert "Envelope-To: it@acme.example" in out.getvalue()
    assert "X-Martech-Topic: alert" in out.getvalue()


def test_factory_picks_configured_transport(tmp_path: Path) -> None:
    assert make_transport(Settings(transport="file", var_dir=tmp_path)).name == "file"
    assert make_transport(Settings(transport="console")).name == "console"
    assert make_transport(Settings(transport="smtp"), connections=3).name == "smtp"


def test_classify_smtp_replies() -> None:
    assert not classify(451, "4.3.0 later").permanent
    bounce = classify(550, "5.1.1 no such user")
    assert bounce.permanent and bounce.hard_bounce
    policy = classify(554, "5.7.1 spam")
    assert policy.permanent and not policy.hard_bounce


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_smtp_transport_delivers_and_classifies_faults(pipelining: bool) -> None:
    handler = RecordingHandler(pipelining=pipelining,
                               faults={"later@x.example": "4xx", "nope@x.example": "hard",
                                       "policy@x.example": "5xx"})
    with SmtpServer(handler) as server:
        transport = SmtpTransport(SmtpOptions("127.0.0.1", server.port, timeout_s=2),
                                  connections=2)
        try:
            ok = await transport.send(_note("ok@x.example"))
            later = await transport.send(_note("later@x.example"))
            nope = await transport.send(_note("nope@x.example"))
            policy = await transport.send(_note("policy@x.example"))
            again = await transport.send(_note("ok2@x.example"))  # connection still usable
            pipes = len(transport._pipes)
        finally:
            await transport.close()
    assert ok.ok and again.ok
    assert later.code == 451 and not later.permanent
    assert nope.code == 550 and nope.permanent and nope.hard_bounce
    assert policy.code == 554 and policy.permanent and not policy.hard_bounce
    assert server.per_recipient() == {"ok@x.example": 1, "ok2@x.example": 1}
    assert server.received[0].parsed()["Subject"] == "Website is DOWN — ça arrive"
    assert (pipes > 0) == pipelining


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_a_link_lost_after_the_end_of_data_is_in_doubt_not_transient(
        pipelining: bool) -> None:
    """Issue 9, point 2: once the end of DATA is written, a dropped link or a timeout leaves
    the message in doubt (the relay may have stored it: "store_drop" does); before it,
    the failure is a plain retry. The ledger's policy decides what "in doubt" becomes."""
    handler = RecordingHandler(pipelining=pipelining,
                               faults={"stored@x.example": "store_drop",
                                       "lost@x.example": "disconnect",
                                       "slow@x.example": "slow",
                                       "early@x.example": "drop_rcpt"},
                               slow_s=1.0)
    with SmtpServer(handler) as server:
        transport = SmtpTransport(SmtpOptions("127.0.0.1", server.port, timeout_s=0.3),
                                  connections=1)
        try:
            stored = await transport.send(_note("stored@x.example"))
            lost = await transport.send(_note("lost@x.example"))
            slow = await transport.send(_note("slow@x.example"))
            early = await transport.send(_note("early@x.example"))
            after = await transport.send(_note("fine@x.example"))  # reconnects by itself
        finally:
            await transport.close()
    for doubt in (stored, lost, slow):
        assert not doubt.ok and doubt.data_sent and doubt.in_doubt, doubt
        assert not doubt.permanent and not doubt.unreachable
    assert not early.ok and not early.data_sent and not early.in_doubt and not early.permanent
    assert after.ok and after.data_sent
    # What the relay really has: the one stored before the drop. (aiosmtpd abandons the slow
    # one when we hang up; a real relay might not: the client cannot tell the two apart.)
    assert server.per_recipient() == {"stored@x.example": 1, "fine@x.example": 1}


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_before_data_refusal_sends_nothing_and_drops_the_transaction(
        pipelining: bool) -> None:
    """A sender whose lease is gone says no at the last moment: the content never goes out,
    and the open DATA is dropped rather than ended (an ended DATA would deliver a message)."""
    handler = RecordingHandler(pipelining=pipelining)
    messages = [_note(f"m{i}@x.example") for i in range(6)]
    outcomes: dict[str, object] = {}

    async def allow(message: OutgoingMessage) -> bool:
        return message.recipients[0] != "m2@x.example"

    with SmtpServer(handler) as server:
        transport = SmtpTransport(SmtpOptions("127.0.0.1", server.port, timeout_s=2),
                                  connections=1)
        try:
            await transport.send_all(iter(messages), lambda m: m,
                                     lambda m, out: outcomes.__setitem__(m.recipients[0], out),
                                     before_data=allow)
        finally:
            await transport.close()
    assert len(outcomes) == 6
    refused = outcomes["m2@x.example"]
    assert not refused.ok and not refused.data_sent  # type: ignore[attr-defined]
    received = set(server.per_recipient())
    # What went out is exactly what says ok; the rest (m2, and when pipelined the message
    # prefetched behind it on the dropped link) is a plain "not sent", never in doubt.
    assert received == {r for r, out in outcomes.items() if out.ok}  # type: ignore[attr-defined]
    assert "m2@x.example" not in received and len(received) >= 4
    assert not any(out.data_sent for r, out in outcomes.items()  # type: ignore[attr-defined]
                   if r not in received)


async def test_smtp_unreachable_is_flagged() -> None:
    with SmtpServer() as server:
        port = server.port
    transport = SmtpTransport(SmtpOptions("127.0.0.1", port, connect_timeout_s=0.5))
    outcome = await transport.send(_note())
    await transport.close()
    assert not outcome.ok and outcome.unreachable


async def test_pipelined_batch_over_several_connections_keeps_every_message_intact() -> None:
    handler = RecordingHandler(faults={"m7@x.example": "5xx", "m13@x.example": "hard"})
    messages = [build_notification(from_="a@acme.example", to=f"m{i}@x.example",
                                   subject=f"n{i}", text=f".leading dot {i}\n..\n.")
                for i in range(40)]
    outcomes: dict[str, object] = {}
    with SmtpServer(handler) as server:
        transport = SmtpTransport(SmtpOptions("127.0.0.1", server.port, timeout_s=2),
                                  connections=4)
        try:
            await transport.send_all(iter(messages), lambda m: m,
                                     lambda m, out: outcomes.__setitem__(m.recipients[0], out))
            assert len(transport._pipes) == 4  # every connection switched to pipelining
        finally:
            await transport.close()
    assert len(outcomes) == 40
    failed = sorted(r for r, out in outcomes.items() if not out.ok)  # type: ignore[attr-defined]
    assert failed == ["m13@x.example", "m7@x.example"]
    assert len(server.received) == 38 and max(server.per_recipient().values()) == 1
    for item in server.received:
        body = item.parsed().get_body(("plain",)).get_content()  # type: ignore[union-attr]
        n = item.rcpt_tos[0][1:].split("@")[0]
        assert body.replace("\r\n", "\n") == f".leading dot {n}\n..\n.\n"
