"""The catalog state machine (nodes, services, checks, KV); pure, wrapped by the store and later by Raft."""

from . import commands
from .model import (
    CRITICAL,
    MAINTENANCE,
    NODE_MAINT_CHECK_ID,
    PASSING,
    SERF_CHECK_ID,
    SERF_CHECK_NAME,
    SERVICE_MAINT_PREFIX,
    STATUSES,
    WARNING,
    Check,
    KVEntry,
    Node,
    Service,
    worst_status,
)
from .state import Catalog, CommandError, Instance, same_row

__all__ = [
    "CRITICAL", "MAINTENANCE", "NODE_MAINT_CHECK_ID", "PASSING", "SERF_CHECK_ID", "SERF_CHECK_NAME",
    "SERVICE_MAINT_PREFIX", "STATUSES", "WARNING", "Catalog", "Check", "CommandError", "Instance", "KVEntry", "Node",
    "Service", "commands", "same_row", "worst_status",
]
