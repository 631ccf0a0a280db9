"""meshagent.raft: a sans-IO Raft core (`RaftNode`), its durable storage and wire codec."""
