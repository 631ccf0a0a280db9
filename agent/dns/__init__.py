"""meshagent.agent.dns."""
