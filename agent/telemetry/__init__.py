"""The agent's metrics: one registry (registry.py), Consul's JSON (json_shape.py) and Prometheus text
(prometheus.py)."""
