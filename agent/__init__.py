"""meshagent.agent."""
