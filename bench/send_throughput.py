"""Newsletter send throughput: the whole path into Postfix's smtp-sink, against baselines.

    .venv/bin/python bench/send_throughput.py [--quick] [--recipients N] [--connections N]

Prints, from one run:
- ours: N recipients, audience CSV → materialise → render → message → SMTP over N
  connections → ledger in SQLite, into ``smtp-sink`` (started here on a free port);
- the naive stdlib loop (Jinja2 + EmailMessage + smtplib, one connection) on a sample;
- ``smtp-source -d -s 16 -m N`` (Postfix's C client) against the same sink;
- peak RSS (ru_maxrss) of a 1M-recipient campaign into the file transport (a subprocess);
- the same send DKIM-signed (issue 12), beside the unsigned figure, and the per-message cost
  of signing with dkimpy's own pure-Python RSA versus OpenSSL's (what the service uses).
Targets: ≥ 3,000 msgs/s end to end, ≥ 6x the naive loop, RSS < 200 MB at 1M. Exit 1 if missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HTML = """<!doctype html>
<html><head><style>h1 { color: #1a4d8f; font-family: sans-serif; } a { color: #1a4d8f; }
p { line-height: 1.4; }</style></head>
<body>
<h1>Hello {{ first_name | default('friend') }},</h1>
<p>{{ intro }}</p>
<ul>
{% for article in articles %}
  <li><a href="{{ article.url }}">{{ article.title }}</a> — {{ article.summary }}</li>
{% endfor %}
</ul>
<p><a href="https://acme.example/account">Your account</a> ·
<a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""
TEXT = """Hello {{ first_name | default('friend') }},

{{ intro }}
{% for article in articles %}
* {{ article.title }}: {{ article.url }}
  {{ article.summary }}
{% endfor %}

Unsubscribe: {{ unsubscribe_url }}
"""
CONTEXT = {
    "intro": "Three things worth your time this week.",
    "articles": [
        {"title": "How we cut page load by 40%", "url": "https://acme.example/blog/speed",
         "summary": "A tour of the changes."},
        {"title": "Customer story: Globex", "url": "https://acme.example/customers/globex",
         "summary": "Scaling support with Acme."},
        {"title": "Webinar: automation 101", "url": "https://acme.example/webinars/101",
         "summary": "Thursday, 17:00 CET."},
    ],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_postfix_tools() -> None:
    """smtp-sink/smtp-source are the C reference; say how to get them instead of a traceback."""
    missing = [p for p in ("/usr/sbin/smtp-sink", "/usr/sbin/smtp-source") if not Path(p).exists()]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found: install Debian's postfix package "
                         "(sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postfix)")


def start_sink(port: int) -> subprocess.Popen[bytes]:
    require_postfix_tools()
    proc = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "nobody", f"127.0.0.1:{port}",
                             "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("smtp-sink did not start")


def write_campaign(root: Path, recipients: int, *, connections: int, batch: int,
                   track: bool = False) -> None:
    import yaml

    (root / "config" / "campaigns").mkdir(parents=True)
    (root / "config" / "audiences").mkdir(parents=True)
    (root / "templates").mkdir()
    (root / "templates" / "digest.html").write_text(HTML, encoding="utf-8")
    (root / "templates" / "digest.txt").write_text(TEXT, encoding="utf-8")
    with (root / "config" / "audiences" / "list.csv").open("w", encoding="utf-8") as f:
        f.write("email,first_name,tags\n")
        for i in range(recipients):
            f.write(f"user{i}@example.com,Name{i},newsletter\n")
    campaign = {
        "name": "digest", "kind": "newsletter", "schedule": {"cron": "0 9 * * MON"},
        "audience": {"csv": "audiences/list.csv"}, "from": "Acme News <news@acme.example>",
        "reply_to": "hello@acme.example",
        "subject": "This week at Acme, {{ first_name | default('friend') }}",
        "template": "digest", "context": CONTEXT,
        "utm": {"source": "newsletter", "medium": "email"},
        "send": {"connections": connections, "batch_size": batch},
        # The headline figure is issue 3's path; click/open tracking (a signed redirect per
        # link, a pixel) is measured separately, as extra per-recipient work.
        "track": {"clicks": track, "opens": track},
        "check_links": False,  # benchmarks talk to loopback only; the links are not ours
    }
    (root / "config" / "campaigns" / "digest.yaml").write_text(yaml.safe_dump(campaign))


def run_ours(root: Path, *, transport: str, port: int = 0, dkim_key: Path | None = None
             ) -> tuple[float, dict[str, Any]]:
    from jobs.newsletter.kind import send_run
    from martech.compose import load_config
    from scheduler.context import ServiceContext
    from scheduler.settings import Settings
    from scheduler.store import runs as run_store
    from scheduler.store.db import make_engine, upgrade
    from scheduler.store.runs import Claim

    settings = Settings(database_url=f"sqlite:///{root}/bench.db", config_dir=root / "config",
                        templates_dir=root / "templates", var_dir=root / "var",
                        transport=transport, smtp_host="127.0.0.1", smtp_port=port,
                        public_base_url="https://mt.acme.example",
                        secret_key="bench-key-0123456789-abcdefghijklmnop",
                        dkim_private_key_file=dkim_key, dkim_selector="bench",
                        dkim_domain="acme.example",
                        node_name="bench")
    engine = make_engine(settings.database_url)
    upgrade(engine)
    ctx = ServiceContext(settings, load_config(settings.config_dir), engine)
    now = datetime.now(UTC)
    with ctx.begin() as conn:
        claim = Claim("digest#manual", "digest", "newsletter", now, "manual", trigger="manual")
        run_id = run_store.claim(conn, [claim], ctx.node, now)[("digest#manual", now)]
    started = time.perf_counter()
    result = asyncio.run(send_run(ctx, ctx.config.campaigns["digest"], run_id,
                                  on_pause="return"))
    elapsed = time.perf_counter() - started
    engine.dispose()
    if result.status != "done":
        raise SystemExit(f"send did not finish: {result.status} {result.detail}")
    return elapsed, result.stats


def dkim_sign_costs(key: Path, samples: int = 200) -> tuple[float, float]:
    """Milliseconds per signature of one rendered message: (OpenSSL RSA, pure dkimpy)."""
    from dataclasses import replace

    from scheduler.delivery.dkim import DkimSigner, _load_key

    signer = DkimSigner("bench", "acme.example", _load_key(key))
    message = (b"From: Acme News <news@acme.example>\r\nTo: user1@example.com\r\n"
               b"Subject: This week at Acme\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\n"
               b"Message-ID: <mt.digest.1.1@acme.example>\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + b"A line of text.\r\n" * 120)
    costs = []
    for variant in (signer, replace(signer, openssl=False)):
        count = samples if variant.openssl else max(20, samples // 10)
        started = time.perf_counter()
        for _ in range(count):
            variant.sign(message)
        costs.append((time.perf_counter() - started) / count * 1000)
    return costs[0], costs[1]


def run_naive(port: int, count: int) -> float:
    """Jinja2 + EmailMessage + smtplib over one connection: what people write first."""
    import jinja2

    env = jinja2.Environment(autoescape=True)
    html_t, text_t = env.from_string(HTML), jinja2.Environment().from_string(TEXT)
    subject_t = jinja2.Environment().from_string(
        "This week at Acme, {{ first_name | default('friend') }}")
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        for i in range(count):
            values = {**CONTEXT, "first_name": f"Name{i}",
                      "unsubscribe_url": f"https://mt.acme.example/unsubscribe/{i}"}
            msg = EmailMessage()
            msg["From"] = "Acme News <news@acme.example>"
            msg["To"] = f"user{i}@example.com"
            msg["Subject"] = subject_t.render(values)
            msg.set_content(text_t.render(values))
            msg.add_alternative(html_t.render(values), subtype="html")
            smtp.send_message(msg)
    return count / (time.perf_counter() - started)


def run_smtp_source(port: int, count: int) -> float:
    started = time.perf_counter()
    subprocess.run(["/usr/sbin/smtp-source", "-d", "-s", "16", "-m", str(count),
                    f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return count / (time.perf_counter() - started)


def rss_child(recipients: int) -> None:
    """Subprocess body: a campaign of ``recipients`` into the file transport; print RSS."""
    # tmpfs when available: a million .eml files are then cheap to write and to delete, and
    # tmpfs pages are not counted in the process's RSS either way.
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="mt-rss-", dir=shm if shm.is_dir() else None))
    try:
        write_campaign(root, recipients, connections=1, batch=1000)
        elapsed, stats = run_ours(root, transport="file")
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"RSS {rss_mb:.1f} {elapsed:.1f} {stats['sent']}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k recipients, 100k for RSS")
    parser.add_argument("--recipients", type=int, default=None)
    parser.add_argument("--rss-recipients", type=int, default=None)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--naive-sample", type=int, default=None)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return 0
    n = args.recipients or (10_000 if args.quick else 100_000)
    rss_n = args.rss_recipients or (100_000 if args.quick else 1_000_000)
    sample = args.naive_sample or (1_000 if args.quick else 5_000)

    port = free_port()
    sink = start_sink(port)
    root = Path(tempfile.mkdtemp(prefix="mt-bench-"))
    try:
        write_campaign(root, n, connections=args.connections, batch=args.batch)
        elapsed, stats = run_ours(root, transport="smtp", port=port)
        ours = stats["sent"] / elapsed
        naive = run_naive(port, sample)
        source = run_smtp_source(port, n)
        tracked_root = Path(tempfile.mkdtemp(prefix="mt-bench-tracked-"))
        try:
            write_campaign(tracked_root, n, connections=args.connections, batch=args.batch,
                           track=True)
            tracked_s, tracked_stats = run_ours(tracked_root, transport="smtp", port=port)
        finally:
            shutil.rmtree(tracked_root, ignore_errors=True)
        tracked = tracked_stats["sent"] / tracked_s
        signed_root = Path(tempfile.mkdtemp(prefix="mt-bench-dkim-"))
        try:
            from scheduler.delivery.dkim import generate_key

            key = signed_root / "dkim.pem"
            generate_key(key)
            write_campaign(signed_root, n, connections=args.connections, batch=args.batch)
            signed_s, signed_stats = run_ours(signed_root, transport="smtp", port=port,
                                              dkim_key=key)
            openssl_ms, dkimpy_ms = dkim_sign_costs(key)
        finally:
            shutil.rmtree(signed_root, ignore_errors=True)
        signed = signed_stats["sent"] / signed_s
    finally:
        sink.terminate()
        sink.wait(5)
        shutil.rmtree(root, ignore_errors=True)
    print(f"recipients: {n}, connections: {args.connections}, batch: {args.batch}, "
          f"cpus: {os.cpu_count()}")
    print(f"ours (whole path, SQLite ledger): {ours:,.0f} msgs/s "
          f"({stats['sent']} sent in {elapsed:.1f} s)")
    print(f"naive stdlib loop ({sample} msgs):  {naive:,.0f} msgs/s  → ours is "
          f"{ours / naive:.1f}x")
    print(f"smtp-source -d -s 16 -m {n}:    {source:,.0f} msgs/s")
    print(f"ours with click + open tracking (a signed link per URL, a pixel): {tracked:,.0f} "
          "msgs/s (not a target)")
    print(f"ours DKIM-signed (rsa-sha256, 2048-bit, relaxed/relaxed): {signed:,.0f} msgs/s vs "
          f"{ours:,.0f} unsigned ({(1 / signed - 1 / ours) * 1e6:,.0f} µs/msg end to end; "
          "not a target)")
    print(f"DKIM signature alone: {openssl_ms:.2f} ms/msg with OpenSSL's RSA (ours), "
          f"{dkimpy_ms:.2f} ms/msg with dkimpy's pure-Python RSA")
    ok = ours >= 3000 and ours >= 6 * naive
    if not args.skip_rss:
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(rss_n)],
                             capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("RSS "))
        _tag, rss_mb, rss_s, rss_sent = line.split()
        print(f"peak RSS, {int(rss_sent):,} recipients into the file transport: "
              f"{float(rss_mb):.0f} MB (ru_maxrss; {float(rss_s):.0f} s)")
        ok = ok and float(rss_mb) < 200
    print("targets met" if ok else "targets MISSED (≥ 3,000 msgs/s, ≥ 6x naive, RSS < 200 MB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
