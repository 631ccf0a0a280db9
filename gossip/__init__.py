"""meshagent.gossip."""
