"""meshagent.agent.config."""
