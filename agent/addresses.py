"""Choosing the address this agent advertises to the cluster."""

from __future__ import annotations

import ipaddress
import subprocess


class AddressError(Exception):
    """No single address can be advertised without the operator choosing one."""


def _ipv4_addresses() -> list[str]:
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    addrs = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            addrs.append(parts[parts.index("inet") + 1].split("/")[0])
    return addrs


def advertise_address(bind: str, advertise: str = "") -> str:
    """The cluster address: -advertise, else -bind, else (bind 0.0.0.0) the one private IPv4 (like Consul)."""
    if advertise:
        return advertise
    if bind not in ("", "0.0.0.0", "::"):
        return bind
    private = [a for a in _ipv4_addresses()
               if ipaddress.ip_address(a).is_private and not ipaddress.ip_address(a).is_loopback]
    if len(private) > 1:
        raise AddressError(f"Multiple private IPv4 addresses found ({', '.join(private)}). "
                           "Please configure one with 'bind' and/or 'advertise'.")
    if not private:
        raise AddressError("No private IPv4 address found. Please configure one with 'bind' and/or 'advertise'.")
    return private[0]
