"""ConnectState: the mesh CA's part of the catalog (cluster ID, CA configuration, roots and their keys), pure.

It lives in the Raft FSM with the rest of the catalog, snapshot and restore included, so every server holds
the same roots and the leader that takes over can sign. Commands carry everything, time included
(`rotated_at`): the FSM reads no clock. Leaf private keys never come here: agents keep theirs.
Commands (op "connect-ca"): `init` (first leadership: the cluster ID, the first root and the configuration;
a second init is refused, so two leaders racing cannot replace the CA), `rotate` (a new active root, the old
one kept, inactive, with the moment it stopped being active), `prune` (drop inactive roots rotated out before
a moment), `set-config`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

WATCH_KEY = "connect-ca"  # the watch key that blocking reads of roots and CA config wait on


class ConnectStateError(ValueError):
    """A CA command the state refuses (the message says why); the catalog turns it into a CommandError."""


@dataclass(frozen=True, slots=True)
class RootRow:
    """One CA root as the FSM keeps it (serial as text: it is wider than msgpack's integers)."""

    id: str
    name: str
    serial_number: str
    signing_key_id: str
    not_before: float
    not_after: float
    root_cert: str
    private_key: str
    intermediate_certs: tuple[str, ...] = ()
    active: bool = False
    rotated_out_at: float | None = None
    create_index: int = 0
    modify_index: int = 0


@dataclass(slots=True)
class ConnectState:
    """The cluster ID, trust domain, CA configuration and roots, changed only by `apply`."""

    cluster_id: str = ""
    trust_domain: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    roots: dict[str, RootRow] = field(default_factory=dict)

    @property
    def active_root(self) -> RootRow | None:
        """The root that signs now."""
        return next((r for r in self.roots.values() if r.active), None)

    def apply(self, index: int, cmd: dict[str, Any]) -> bool:
        """Apply one "connect-ca" command at `index`; True when something changed."""
        action = cmd["action"]
        if action == "init":
            if self.cluster_id:
                raise ConnectStateError("the CA is already initialized")
            cluster_id, trust_domain = str(cmd["cluster_id"]), str(cmd["trust_domain"])
            if not cluster_id or not trust_domain:
                raise ConnectStateError("init needs a cluster_id and a trust_domain")
            root = _root(cmd["root"], index, active=True)
            self.cluster_id, self.trust_domain = cluster_id, trust_domain
            self.config = _config(cmd.get("config", {}))
            self.roots = {root.id: root}
            return True
        if not self.cluster_id:
            raise ConnectStateError(f"{action}: the CA is not initialized")
        if action == "rotate":
            new = _root(cmd["root"], index, active=True)
            if new.id in self.roots:
                raise ConnectStateError(f"root {new.id} is already known")
            at = float(cmd["rotated_at"])
            self.roots = {rid: replace(r, active=False, rotated_out_at=at, modify_index=index) if r.active else r
                          for rid, r in self.roots.items()}
            self.roots[new.id] = new
            return True
        if action == "prune":
            before = float(cmd["before"])
            keep = {rid: r for rid, r in self.roots.items()
                    if r.active or r.rotated_out_at is None or r.rotated_out_at >= before}
            changed = len(keep) != len(self.roots)
            self.roots = keep
            return changed
        if action == "set-config":
            self.config = _config(cmd["config"])
            return True
        raise ConnectStateError(f"unknown connect-ca action {action!r}")

    def snapshot(self, redact_secrets: bool = False) -> dict[str, Any]:
        """As plain data for the catalog snapshot; `redact_secrets` blanks the roots' private keys and any
        key in the CA configuration (what client agents get: only servers may hold them)."""
        roots = [asdict(r) for r in self.roots.values()]
        config = self.config
        if redact_secrets:
            roots = [{**r, "private_key": ""} for r in roots]
            config = redacted_config(config)
        return {"cluster_id": self.cluster_id, "trust_domain": self.trust_domain, "config": config, "roots": roots}

    @classmethod
    def restore(cls, raw: dict[str, Any] | None) -> ConnectState:
        """From `snapshot()` data; None (a snapshot from before the mesh) gives an empty state."""
        if raw is None:
            return cls()
        roots = [_root(r, int(r.get("create_index", 0)), active=bool(r.get("active"))) for r in raw["roots"]]
        rows = {r.id: replace(r, rotated_out_at=_opt_float(d.get("rotated_out_at")),
                              modify_index=int(d.get("modify_index", r.create_index)))
                for r, d in zip(roots, raw["roots"], strict=True)}
        return cls(str(raw["cluster_id"]), str(raw["trust_domain"]), _config(raw["config"]), rows)


def redacted_command(cmd: dict[str, Any]) -> dict[str, Any]:
    """A "connect-ca" command as client agents' replicas get it: no private keys (their FSM accepts "")."""
    out = dict(cmd)
    if isinstance(out.get("root"), dict):
        out["root"] = {**out["root"], "private_key": ""}
    if isinstance(out.get("config"), dict):
        out["config"] = redacted_config(out["config"])
    return out


def redacted_config(config: dict[str, Any]) -> dict[str, Any]:
    """The CA configuration without a supplied PrivateKey (in `Config`, Consul's shape, or at the top)."""
    out = {k: v for k, v in config.items() if k != "PrivateKey"}
    inner = out.get("Config")
    if isinstance(inner, dict) and "PrivateKey" in inner:
        out["Config"] = {k: v for k, v in inner.items() if k != "PrivateKey"}
    return out


def _root(raw: dict[str, Any], index: int, active: bool) -> RootRow:
    if not isinstance(raw, dict):
        raise ConnectStateError("a root must be a map")
    texts = {k: raw[k] for k in ("id", "name", "serial_number", "signing_key_id", "root_cert", "private_key")}
    # private_key is "" on client agents (redacted by the feed); every other field must be there.
    if not all(isinstance(v, str) and (v or k == "private_key") for k, v in texts.items()):
        raise ConnectStateError("a root needs id, name, serial_number, signing_key_id, root_cert and private_key")
    inter = raw.get("intermediate_certs", ())
    if not isinstance(inter, list | tuple) or not all(isinstance(c, str) for c in inter):
        raise ConnectStateError("intermediate_certs must be a list of PEM strings")
    return RootRow(**texts, not_before=float(raw["not_before"]), not_after=float(raw["not_after"]),
                   intermediate_certs=tuple(inter), active=active, create_index=index, modify_index=index)


def _config(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise ConnectStateError("CA configuration must be a map with string keys")
    return dict(raw)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)
