"""UTM parameters on every http(s) link of a message: plain URLs, hrefs in HTML, URLs in text."""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_HREF = re.compile(r"""(href\s*=\s*)(["'])(https?://[^"']*)\2""", re.IGNORECASE)
_TEXT_URL = re.compile(r"https?://[^\s<>\"')\]]+")


class UtmTagger:
    """Adds utm_* parameters to http(s) links; existing parameters win. Cached per URL."""

    def __init__(self, params: Mapping[str, str], skip_prefixes: tuple[str, ...] = ()) -> None:
        self.params = {k: v for k, v in params.items() if v}
        self.skip = tuple(p for p in skip_prefixes if p)
        self._cache: dict[str, str] = {}

    def url(self, url: str) -> str:
        cached = self._cache.get(url)
        if cached is not None:
            return cached
        if not self.params or (self.skip and url.startswith(self.skip)):
            return url  # not cached: our own per-recipient links (unsubscribe) are all skipped
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        have = {k for k, _v in query}
        query += [(k, v) for k, v in self.params.items() if k not in have]
        out = urlunsplit(parts._replace(query=urlencode(query)))
        if len(self._cache) >= 4_096:  # bounded: a template's links are few; per-recipient ones
            self._cache.clear()        # would grow it with the audience
        self._cache[url] = out
        return out

    def html(self, html: str) -> str:
        if not self.params:
            return html

        def repl(match: re.Match[str]) -> str:
            raw = html_lib.unescape(match.group(3))
            tagged = html_lib.escape(self.url(raw), quote=True)
            return f"{match.group(1)}{match.group(2)}{tagged}{match.group(2)}"

        return _HREF.sub(repl, html)

    def text(self, text: str) -> str:
        if not self.params:
            return text
        return _TEXT_URL.sub(lambda m: self.url(m.group(0)), text)
