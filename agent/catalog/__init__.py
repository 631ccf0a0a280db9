"""meshagent.agent.catalog."""
