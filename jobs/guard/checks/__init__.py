"""Probes for the IT health guard: http, tcp, dns, smtp, tls — each with timeouts on every step."""
