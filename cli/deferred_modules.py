"""Standard-library modules that the agent's libraries import but an agent rarely uses, loaded on first use.

trio imports `ssl` at start-up for its TLS streams, and dnspython imports `importlib.metadata` (and with it
email, zipfile and csv) to check optional packages. An agent without TLS checks or the mesh proxy never
touches either: deferring them saves about 2 MB of every agent's resident memory (docs/agent-memory.md).

`importlib.util.LazyLoader` does not do here: on Python 3.11 the `import` statement itself reads the
module's `__spec__`, which loads a lazy module at once. A placeholder module that loads the real one on its
first missing attribute does, and behaves as the real module afterwards (it holds the same names).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

DEFERRED = ("ssl", "importlib.metadata")

_load_lock = threading.Lock()


class DeferredModule(types.ModuleType):
    """Stands in for a module until one of its attributes is read, then becomes a copy of it."""

    def __getattr__(self, attr: str) -> object:
        with _load_lock:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
                try:
                    real = importlib.import_module(self.__name__)
                except BaseException:
                    sys.modules[self.__name__] = self
                    raise
                self.__dict__.update(real.__dict__)
        return getattr(sys.modules[self.__name__], attr)


def defer(name: str) -> None:
    """Put a placeholder for `name` in sys.modules, unless it is loaded already or doesn't exist."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    placeholder = DeferredModule(name)
    placeholder.__spec__ = spec
    placeholder.__file__ = spec.origin
    sys.modules[name] = placeholder
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, placeholder)


def defer_rarely_used_modules() -> None:
    """Defer DEFERRED; call before trio or dnspython is imported."""
    for name in DEFERRED:
        defer(name)
    # dnspython would read package metadata at import to see whether the `idna` package (IDNA 2008) is
    # recent enough. Our names are ASCII (service and node names are validated), for which IDNA 2003 and
    # 2008 agree, so the answer doesn't matter: give it, and skip loading importlib.metadata.
    import dns._features

    dns._features.force("idna", False)
