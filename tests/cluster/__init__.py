"""The VM cluster on one machine: hosts in network namespaces (hosts.py) and the suites that use them."""
