"""Give the heap pages that start-up freed back to the operating system (glibc's malloc_trim).

Importing and wiring the agent allocates and frees a few MB of short-lived objects; glibc keeps the freed
pages mapped, so they stay in the agent's resident memory for good. One trim once the agent is up returns
about 2 MB per agent (docs/agent-memory.md). Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger(__name__)


def trim_heap() -> None:
    """Collect garbage, then ask the C allocator to unmap its free pages; a no-op without glibc."""
    gc.collect()
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    malloc_trim(0)
