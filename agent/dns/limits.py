"""How much a DNS client can make the agent hold: connections, time, concurrent work (one object, defaults
with their reasons, as memberlist's config does)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class DNSLimits:
    """Bounds on DNS work and connections; the TCP timeouts follow miekg/dns, the server Consul uses."""

    tcp_idle: float = 8.0  # a connection waiting for its next query is closed after this (miekg idleTimeout)
    tcp_read: float = 2.0  # a query whose first byte arrived must be complete within this (miekg readTimeout)
    tcp_write: float = 2.0  # an answer the client does not read within this closes the connection
    tcp_per_client: int = 16  # open DNS TCP connections from one IP; more are closed at once
    tcp_total: int = 512  # open DNS TCP connections in all (well under the default 1,024 open files)
    pending: int = 256  # uncached UDP queries answered at once; beyond, the UDP loop waits (the kernel queues)
    recursive: int = 64  # queries forwarded to recursors at once; beyond, SERVFAIL without asking upstream
    inline_records: int = 256  # answers with more records to write than this are rendered in a worker thread
