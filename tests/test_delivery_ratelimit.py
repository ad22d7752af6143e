"""Token buckets survive a restart; tokens for links verify only for their purpose."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from scheduler.delivery.ratelimit import RateLimiter
from scheduler.delivery.tokens import Signer, UnsubscribeRef, unsubscribe_token, verify_unsubscribe


def test_rate_buckets_persist_across_restarts(db: Engine, t0: datetime) -> None:
    limiter = RateLimiter("newsletter:x", rate_per_s=10, rate_per_h=100)
    assert limiter.max_batch(200) == 10
    with db.begin() as conn:
        limiter.load(conn, t0)
    assert limiter.wait_s(10, t0) == 0
    limiter.take(10, t0)
    assert limiter.wait_s(10, t0) == 1.0  # the per-second bucket refills in a second
    with db.begin() as conn:
        limiter.save(conn)

    restarted = RateLimiter("newsletter:x", rate_per_s=10, rate_per_h=100)
    with db.begin() as conn:
        restarted.load(conn, t0)
    assert restarted.wait_s(10, t0) == 1.0  # a restart hands out no fresh burst
    later = t0 + timedelta(seconds=1)
    assert restarted.wait_s(10, later) == 0
    for second in range(1, 10):  # drain the hourly bucket: 90 more tokens over 9 seconds
        restarted.take(10, t0 + timedelta(seconds=second))
    wait = restarted.wait_s(10, t0 + timedelta(seconds=10))
    assert 300 < wait < 400  # ~10 tokens at 100/h → about six minutes


def test_unsubscribe_tokens_are_signed_and_purpose_bound() -> None:
    signer = Signer("secret")
    token = unsubscribe_token(signer, 42)
    assert verify_unsubscribe(signer, token) == UnsubscribeRef(delivery_id=42)
    assert verify_unsubscribe(Signer("other"), token) is None
    assert verify_unsubscribe(signer, token[:-2] + ("AA" if token[-2:] != "AA" else "BA")) is None
    assert signer.verify("click", token) is None
    assert verify_unsubscribe(signer, "garbage") is None
