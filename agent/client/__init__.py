"""The client role: an agent without Raft that forwards writes to a server and reads from a catalog replica."""
