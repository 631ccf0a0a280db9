"""The VM cluster on one machine: the suites on tests/support/cluster_hosts.py (hosts in network namespaces)."""
