"""meshagent.agent.checks."""
