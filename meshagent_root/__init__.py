"""meshagent: a service mesh agent for fleets of VMs."""

__version__ = "0.1.0"
