"""The :8300 RPC shared by servers and client agents: framing, the RPC client, and error codes."""
