"""Click and open tracking in a rendered HTML part (ARCHITECTURE.md, invariant 9).

Applied to the *rendered* HTML of one recipient, after UTM tagging, so the fast and the full
Jinja render paths stay byte-identical (both hand over the same HTML). Per recipient this is
one regex pass plus one HMAC per link; nothing else.
"""

from __future__ import annotations

import html as html_lib
import re
from urllib.parse import unquote

from scheduler.delivery.tokens import Signer, click_token, open_token, safe_target

# Only <a href="http(s)://…">: stylesheet <link>s, mailto: and relative links stay as they are.
_A_HREF = re.compile(r"""(<a\s[^>]*?\bhref\s*=\s*)(["'])(https?://[^"']*)\2""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


class LinkTracker:
    def __init__(self, signer: Signer, base_url: str, *, clicks: bool, opens: bool) -> None:
        self.signer = signer
        self.base_url = base_url.rstrip("/")
        self.clicks = clicks
        self.opens = opens
        # Our own links (the unsubscribe page) are never wrapped.
        self._own = self.base_url + "/"

    def click_url(self, delivery_id: int, url: str, recipient: str | None = None) -> str | None:
        if url.startswith(self._own) or not safe_target(url):
            return None
        # A link personalised with the address stays as written: tokens carry no address.
        if recipient and recipient.lower() in unquote(url).lower():
            return None
        return f"{self.base_url}/c/{click_token(self.signer, delivery_id, url)}"

    def pixel(self, delivery_id: int) -> str:
        return (f'<img src="{self.base_url}/o/{open_token(self.signer, delivery_id)}.gif" '
                'width="1" height="1" alt="">')

    def apply(self, html: str, delivery_id: int, recipient: str | None = None) -> str:
        if self.clicks:
            def repl(match: re.Match[str]) -> str:
                wrapped = self.click_url(delivery_id, html_lib.unescape(match.group(3)),
                                         recipient)
                if wrapped is None:
                    return match.group(0)
                quoted = html_lib.escape(wrapped, quote=True)
                return f"{match.group(1)}{match.group(2)}{quoted}{match.group(2)}"

            html = _A_HREF.sub(repl, html)
        if self.opens:
            pixel = self.pixel(delivery_id)
            at = html.rfind("</body>")
            if at < 0:
                ends = list(_BODY_END.finditer(html))
                at = ends[-1].start() if ends else len(html)
            html = f"{html[:at]}{pixel}{html[at:]}"
        return html
