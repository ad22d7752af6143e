"""Several nodes, one campaign: 1, 2 and 3 ``martech run`` nodes on PostgreSQL into smtp-sink.

    .venv/bin/python bench/cluster.py [--quick] [--database-url URL] [--recipients N]

Each scenario gets a fresh PostgreSQL schema, a fresh Postfix ``smtp-sink`` (``-D``: every
message is appended to a dump file, so copies are counted per recipient at the sink) and real
``martech run`` processes. The campaign is paused while the nodes start and resumed once all
are up, so every node sends from the first batch. Prints, per node count:

- msgs/s of the whole cluster and of each node, over the send's span (first claim to last
  ``sent``, the database's rows);
- claims per second and claim conflicts per second: claims that came back short because the
  rows left were locked by another node's claim (``FOR UPDATE SKIP LOCKED`` skipped them);
- CPU seconds each node used (from /proc), against the two cores' wall time.

Then chaos, 3 nodes, once per delivery policy: ``kill -9`` a random node at random moments,
restarting it each time; the ledger and the sink must agree — at_most_once: nobody twice,
unknown <= 2 x connections per kill; at_least_once: nobody lost, copies beyond one only for
rows a kill left in doubt, each with the row's one Message-ID. Exit 1 if any of that fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.send_throughput import CONTEXT, HTML, free_port, require_postfix_tools
from scheduler.store.db import make_engine, upgrade
from scheduler.store.tables import deliveries
from tests.cluster_support import Db, Node, wait_for, write_cluster_config

CONNECTIONS = 4
BATCH = 200
LEASE_S = "3"
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def schema(base_url: str) -> Any:
    """A fresh schema on the server, dropped afterwards; yields a migrated URL into it."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    url = sa.engine.make_url(base_url).update_query_dict(
        {"options": f"-csearch_path={name}"}).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@contextmanager
def sink() -> Any:
    """smtp-sink appending every message to a dump file; yields (port, dump path)."""
    require_postfix_tools()
    # Its own directory, open to `nobody` (smtp-sink drops to it before writing the dump).
    folder = Path(tempfile.mkdtemp(prefix="mt-sink-"))
    os.chmod(folder, 0o777)
    dump = folder / "dump"
    port = free_port()
    proc = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "nobody", "-D", str(dump),
                             f"127.0.0.1:{port}", "1000"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        if proc.poll() is not None:
            raise SystemExit(f"smtp-sink exited at start (code {proc.returncode})")
        yield port, dump
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(folder, ignore_errors=True)


def copies(dump: Path) -> tuple[Counter[str], dict[str, set[str]]]:
    """Copies per recipient, and the Message-IDs each recipient got, read from the dump."""
    counts: Counter[str] = Counter()
    ids: dict[str, set[str]] = {}
    rcpt = None
    with dump.open("rb") as f:
        for line in f:
            if line.startswith(b"X-Rcpt-Args: <"):
                rcpt = line[14:].split(b">", 1)[0].decode().lower()
                counts[rcpt] += 1
            elif line.startswith(b"Message-ID: ") and rcpt is not None:
                ids.setdefault(rcpt, set()).add(line[12:].strip().decode())
                rcpt = None
    return counts, ids


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    nodes: int
    sent: int
    span_s: float
    per_node: dict[str, int]
    cpu: dict[str, float]
    claims: int
    contended: int
    notes: list[str] = field(default_factory=list)


def _start_nodes(root: Path, url: str, port: int, n: int, **send: Any) -> tuple[list[Node], Db]:
    names = [f"node-{chr(97 + i)}" for i in range(n)]
    nodes = [Node(name, root, url, port, delivery_lease_s=LEASE_S, smtp_timeout_s="10")
             for name in names]
    db = Db(url)
    paused = nodes[0].cli("pause", "news", "--reason", "bench: waiting for every node")
    assert paused.returncode == 0, paused.stderr
    for node in nodes:
        node.start()
    wait_for("every node up", lambda: all("martech running" in n.log() for n in nodes), 90,
             nodes, poll_s=0.2)
    resumed = nodes[-1].cli("resume", "news")
    assert resumed.returncode == 0, resumed.stderr
    return nodes, db


def _done(db: Db) -> bool:
    run = db.run()
    return run is not None and run.status == "done"


def _summaries(nodes: list[Node]) -> tuple[int, int]:
    claims = contended = 0
    for node in nodes:
        for line in node.log().splitlines():
            if '"action": "sender_done"' in line:
                data = json.loads(line)
                claims += int(data.get("claims", 0))
                contended += int(data.get("contended", 0))
    return claims, contended


def _span(url: str) -> float:
    engine = make_engine(url)
    with engine.connect() as conn:
        first, last = conn.execute(sa.select(sa.func.min(deliveries.c.claimed_at),
                                             sa.func.max(deliveries.c.sent_at))).one()
    engine.dispose()
    return float((last - first).total_seconds())


def scale(base_url: str, n: int, recipients: int, work: Path) -> Result:
    root = work / f"scale-{n}"
    addresses = [f"b{i:06d}@example.com" for i in range(recipients)]
    with schema(base_url) as url, sink() as (port, dump):
        write_cluster_config(root, addresses, url, due_in_s=1.0, batch_size=BATCH,
                             connections=CONNECTIONS)
        (root / "templates" / "news.html").write_text(HTML, encoding="utf-8")
        _patch_context(root)
        nodes, db = _start_nodes(root, url, port, n)
        try:
            wait_for("the run to finish", lambda: _done(db),
                     300, nodes, poll_s=0.5)
            cpu = {node.name: cpu_s(node.proc.pid) for node in nodes if node.proc}
            shares = db.shares()
        finally:
            for node in nodes:
                node.stop()
            db.close()
        counts, _ids = copies(dump)
        claims, contended = _summaries(nodes)
        span = _span(url)
    result = Result(n, sum(shares.values()), span, dict(shares), cpu, claims, contended)
    if counts != Counter({a: 1 for a in addresses}):
        result.notes.append(f"NOT exactly once at the sink: {len(counts)} distinct, "
                            f"{sum(counts.values())} copies")
    return result


def _patch_context(root: Path) -> None:
    path = root / "config" / "campaigns" / "news.yaml"
    campaign = yaml.safe_load(path.read_text())
    campaign["context"] = CONTEXT
    path.write_text(yaml.safe_dump(campaign))


@dataclass
class Chaos:
    policy: str
    kills: int
    in_doubt_per_kill: list[int]
    in_doubt: int  # distinct rows (a node killed again before it recovered counts once)
    unknown: int
    lost: int
    doubled: int
    doubled_outside_doubt: int
    foreign_ids: int
    ok: bool = True


def chaos(base_url: str, policy: str, recipients: int, kills: int, work: Path,
          rng: random.Random) -> Chaos:
    root = work / f"chaos-{policy}"
    addresses = [f"k{i:06d}@example.com" for i in range(recipients)]
    in_doubt: list[set[str]] = []
    with schema(base_url) as url, sink() as (port, dump):
        write_cluster_config(root, addresses, url, due_in_s=1.0, batch_size=BATCH,
                             connections=CONNECTIONS, delivery=policy)
        nodes, db = _start_nodes(root, url, port, 3)
        try:
            points = sorted(rng.sample(range(recipients // 10, recipients * 8 // 10), kills))
            for point in points:
                wait_for(f"{point} sent", lambda p=point: db.statuses()["sent"] >= p, 300,
                         nodes, poll_s=0.05)
                victim = rng.choice(nodes)
                victim.kill()
                held = {c.id for c in db.claims() if c.node == victim.name}
                in_doubt.append({r for r, row in db.ledger().items() if row.status == "sending"
                                 and row.on_wire and row.claim_id in held})
                victim.start()  # the same node name: it adopts its own dead claims at once
            wait_for("the run to finish", lambda: _done(db),
                     300, nodes, poll_s=0.5)
            ledger = db.ledger()
        finally:
            for node in nodes:
                node.stop()
            db.close()
        counts, ids = copies(dump)
    doubted = set().union(*in_doubt)
    unknown = {r for r, row in ledger.items() if row.status == "unknown"}
    lost = [r for r in addresses if counts[r] == 0 and r not in unknown]
    doubled = [r for r, c in counts.items() if c > 1]
    foreign = sum(1 for r, got in ids.items() if got != {f"<{ledger[r].message_id}>"})
    result = Chaos(policy, kills, [len(d) for d in in_doubt], len(doubted), len(unknown),
                   len(lost), len(doubled), len(set(doubled) - doubted), foreign)
    bound = all(len(d) <= 2 * CONNECTIONS for d in in_doubt)
    if policy == "at_most_once":
        result.ok = bound and not doubled and not lost and unknown <= doubted
    else:
        result.ok = bound and not lost and not unknown and set(doubled) <= doubted \
            and not foreign
    return result


def pg_commit_ms(base_url: str) -> float:
    """One logged (WAL-flushed) commit on this server: the floor of a group commit."""
    engine = sa.create_engine(base_url)
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS bench_fsync (id int primary key, "
                             "v int)"))
        conn.execute(sa.text("INSERT INTO bench_fsync VALUES (1, 0) ON CONFLICT DO NOTHING"))
        conn.commit()
        started = time.perf_counter()
        for _ in range(100):
            conn.execute(sa.text("UPDATE bench_fsync SET v = v + 1 WHERE id = 1"))
            conn.commit()
        elapsed = (time.perf_counter() - started) / 100 * 1000
        conn.execute(sa.text("DROP TABLE bench_fsync"))
        conn.commit()
    engine.dispose()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6k recipients, 3 kills")
    parser.add_argument("--database-url", default=os.environ.get(
        "MARTECH_BENCH_DATABASE_URL", os.environ.get("MARTECH_TEST_DATABASE_URL", DEFAULT_URL)))
    parser.add_argument("--recipients", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    n = args.recipients or (6_000 if args.quick else 30_000)
    kills = 3 if args.quick else 5
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    print(f"cluster benchmark: {n} recipients, {CONNECTIONS} connections and batches of "
          f"{BATCH} per node, PostgreSQL, smtp-sink, cpus: {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f}, seed {seed}")
    print(f"one WAL-flushed commit on this server: {pg_commit_ms(args.database_url):.2f} ms")
    ok = True
    with tempfile.TemporaryDirectory(prefix="mt-cluster-") as tmp:
        work = Path(tmp)
        base = None
        for nodes in (1, 2, 3):
            r = scale(args.database_url, nodes, n, work)
            rate = r.sent / r.span_s
            base = base or rate
            per_node = ", ".join(f"{k} {v / r.span_s:,.0f}" for k, v in sorted(r.per_node.items()))
            cpu = sum(r.cpu.values())
            print(f"{nodes} node(s): {rate:,.0f} msgs/s ({rate / base:.2f}x one node; "
                  f"{r.sent} in {r.span_s:.1f} s) — per node {per_node}; claims "
                  f"{r.claims / r.span_s:.1f}/s, conflicts {r.contended / r.span_s:.2f}/s; "
                  f"node CPU {cpu:.1f} s of {2 * r.span_s:.1f} core-s")
            for note in r.notes:
                print(f"  {note}")
                ok = False
        for policy in ("at_most_once", "at_least_once"):
            c = chaos(args.database_url, policy, n // 3 if args.quick else n // 2, kills,
                      work, rng)
            print(f"chaos {policy}: {c.kills} kills (in doubt per kill {c.in_doubt_per_kill}, "
                  f"bound {2 * CONNECTIONS}; {c.in_doubt} distinct rows): unknown {c.unknown}, "
                  f"lost {c.lost}, doubled "
                  f"{c.doubled} (outside a kill's doubt {c.doubled_outside_doubt}), other "
                  f"Message-IDs {c.foreign_ids} — {'ok' if c.ok else 'FAILED'}")
            ok = ok and c.ok
    print("invariants held" if ok else "invariants FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
