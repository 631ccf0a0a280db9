"""The server role: a Raft node holding the catalog, its transport on :8300 and RPC forwarding."""
