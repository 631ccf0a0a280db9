"""meshagent.agent.http."""
