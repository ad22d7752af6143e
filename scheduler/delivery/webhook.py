"""POST a JSON notification to a webhook (Slack-compatible incoming webhook or generic JSON).

Every step has a timeout. The URL of an incoming webhook *is* its credential, so it never
appears in errors or logs: only its host does.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from scheduler.delivery.base import SendOutcome

# 408 and 429 mean "try again later"; other 4xx mean the request itself is wrong.
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
_MAX_ERROR_BODY = 200


def safe_host(url: str) -> str:
    """The part of a webhook URL that may be shown: scheme and host, never path or token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def slack_body(text: str, **extra: Any) -> dict[str, Any]:
    """A Slack-compatible incoming-webhook body: ``{"text": ...}`` (Mattermost, Teams, …)."""
    return {"text": text, **extra}


def make_timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s, sock_connect=timeout_s,
                                 sock_read=timeout_s)


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any], *,
                    timeout_s: float) -> SendOutcome:
    """POST ``body`` as JSON; never raises for a per-request failure.

    2xx is success; 3xx (not followed) and 4xx (other than 408/409/425/429) are permanent;
    the rest is retried.
    """
    where = safe_host(url)
    if urlsplit(url).scheme not in ("http", "https"):
        return SendOutcome(ok=False, error=f"not an http(s) URL: {where}", permanent=True)
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=body, timeout=make_timeout(timeout_s),
                                    allow_redirects=False) as response:
                status = response.status
                location = response.headers.get("Location", "")
                text = (await response.text(errors="replace"))[:_MAX_ERROR_BODY]
    except TimeoutError:
        return SendOutcome(ok=False, error=f"timeout after {timeout_s}s posting to {where}")
    except aiohttp.ClientError as exc:
        return SendOutcome(ok=False, error=f"{type(exc).__name__} posting to {where}")
    except OSError as exc:
        return SendOutcome(ok=False, error=f"{type(exc).__name__} posting to {where}")
    if 200 <= status < 300:
        return SendOutcome(ok=True, code=status)
    if 300 <= status < 400:
        # Never followed (a redirect could leak the body elsewhere) and retrying cannot help:
        # the webhook moved, someone must update the config. Only scheme://host is shown.
        moved = f"redirected to {safe_host(urljoin(url, location))}" if location else "redirect"
        return SendOutcome(ok=False, code=status, permanent=True,
                           error=f"HTTP {status} from {where}: {moved} (update the webhook URL)")
    permanent = 400 <= status < 500 and status not in _RETRYABLE_4XX
    detail = " ".join(text.split())
    return SendOutcome(ok=False, code=status, permanent=permanent,
                       error=f"HTTP {status} from {where}" + (f": {detail}" if detail else ""))
