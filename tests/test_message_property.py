"""Every built message parses with the stdlib parser to the intended headers and parts."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email.policy import default as default_policy
from email.utils import formataddr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.delivery.message import (
    AddressError,
    Envelope,
    MessageBuilder,
    encode_unstructured,
    format_address,
)
from scheduler.errors import HeaderInjectionError

# Header text: anything printable, any script, no line breaks (those are refused, tested below).
header_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
    min_size=1, max_size=200,
).filter(lambda s: s.strip() != "")
body_line = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
            max_size=300),
    st.sampled_from([".", "..", ". leading dot", "From me", "=_mt_x", "--=_mt_x", "a" * 1200,
                     "trailing space   ", "\ttab"]),
)
body = st.lists(body_line, min_size=0, max_size=12).map("\n".join)
local = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,20}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s)


def _name(display: str) -> str:
    return " ".join(display.split())


def _norm(text: str) -> str:
    return text.replace("\r\n", "\n")


@settings(max_examples=120, deadline=None)
@given(subject=header_text, sender_name=header_text, to_name=header_text, user=local,
       text=body, html=body)
def test_messages_parse_back(subject: str, sender_name: str, to_name: str, user: str,
                             text: str, html: str) -> None:
    sender = formataddr((sender_name, "news@acme.example"))
    builder = MessageBuilder(Envelope(from_header=sender, reply_to="hello@acme.example",
                                      campaign="digest", run_id=9, one_click=True),
                             boundary_seed="digest9")
    builder.set_date(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    to = f"{user}@example.com"
    msg = builder.build(to=to, subject=subject, text=text, html=html,
                        message_id=builder.message_id(42), to_name=to_name.strip(),
                        list_unsubscribe=["https://mt.example/unsubscribe/tok",
                                          "mailto:unsubscribe@acme.example?subject=u"])
    assert all(len(line) <= 998 for line in msg.data.split(b"\r\n"))
    assert b"\n" not in msg.data.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(msg.data, policy=default_policy)
    assert not parsed.defects
    assert str(parsed["Subject"]) == subject
    assert parsed["From"].addresses[0].display_name == _name(sender_name)
    assert parsed["From"].addresses[0].addr_spec == "news@acme.example"
    assert parsed["To"].addresses[0].display_name == _name(to_name)
    assert parsed["To"].addresses[0].addr_spec == to
    assert parsed["Message-ID"] == "<mt.digest.9.42@acme.example>"
    assert parsed["Date"].datetime == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert parsed["Precedence"] == "bulk"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["List-Unsubscribe"] == ("<https://mt.example/unsubscribe/tok>, "
                                          "<mailto:unsubscribe@acme.example?subject=u>")
    assert parsed.get_content_type() == "multipart/alternative"
    plain, rich = list(parsed.iter_parts())
    assert plain.get_content_type() == "text/plain"
    assert rich.get_content_type() == "text/html"
    expected_text = text if text.endswith("\n") else text + "\n"
    assert _norm(plain.get_content()) == expected_text
    expected_html = html if html.endswith("\n") else html + "\n"
    assert _norm(rich.get_content()) == expected_html


@pytest.mark.parametrize("value", ["a\r\nBcc: x@y.example", "a\nb", "a\rb", "a\x00b"])
def test_line_breaks_in_headers_are_refused(value: str) -> None:
    builder = MessageBuilder(Envelope(from_header="n@acme.example"))
    builder.set_date(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(HeaderInjectionError):
        builder.build(to="a@b.example", subject=value, text="t", html=None, message_id="m@x")
    with pytest.raises(HeaderInjectionError):
        encode_unstructured("Subject", value)
    with pytest.raises((HeaderInjectionError, AddressError)):
        format_address(value, "a@b.example")
    with pytest.raises(HeaderInjectionError):
        MessageBuilder(Envelope(from_header=f"{value} <n@acme.example>"))
    with pytest.raises((HeaderInjectionError, AddressError)):
        builder.build(to=f"a{value}@b.example", subject="s", text="t", html=None,
                      message_id="m@x")


def test_non_ascii_subject_is_rfc2047_encoded() -> None:
    assert encode_unstructured("Subject", "Plain subject") == "Plain subject"
    encoded = encode_unstructured("Subject", "Grüße aus Köln")
    assert encoded.startswith("=?utf-8?b?") and encoded.isascii()
