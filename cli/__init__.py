"""meshagent.cli."""
