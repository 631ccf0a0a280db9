"""meshagent.raft."""
