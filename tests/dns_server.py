"""A small authoritative DNS server (dnslib) on 127.0.0.1 UDP port 0, in a thread.

``records`` maps (name, type) to answers, e.g. {("www.acme.test.", "A"): ["127.0.0.5"]}.
Stop and restart it (same port) to cause outages.
"""

from __future__ import annotations

import socket
import threading

from dnslib import QTYPE, RR, DNSRecord
from dnslib.dns import AAAA, CNAME, MX, NS, TXT, A

_RDATA = {"A": A, "AAAA": AAAA, "CNAME": CNAME, "NS": NS, "TXT": TXT}


class DnsServer:
    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = records
        self.port = 0
        self.queries = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> DnsServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.settimeout(0.1)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if self._thread is not None:
            self._thread.join(2)
        if sock is not None:
            sock.close()

    def _serve(self, sock: socket.socket) -> None:
        while self._sock is sock:
            try:
                data, peer = sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            self.queries += 1
            request = DNSRecord.parse(data)
            reply = request.reply()
            qname = str(request.q.qname)
            qtype = QTYPE[request.q.qtype]
            answers = self.records.get((qname, qtype))
            if answers is None:
                reply.header.rcode = 3  # NXDOMAIN
            for value in answers or []:
                if qtype == "MX":
                    rdata = MX(value)
                elif qtype == "TXT":  # a string holds ≤ 255 bytes; longer values are split
                    rdata = TXT([value[i:i + 255] for i in range(0, len(value), 255)])
                else:
                    rdata = _RDATA[qtype](value)
                reply.add_answer(RR(qname, getattr(QTYPE, qtype), rdata=rdata, ttl=60))
            sock.sendto(reply.pack(), peer)
