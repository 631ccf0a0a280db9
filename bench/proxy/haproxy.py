"""The reference of the proxy benchmark: a haproxy pair (Debian's haproxy 2.6) doing what our sidecar pair
does, and haproxy as the fast application behind both pairs.

Client side: frontend plain → backend `ssl crt <web> ca-file <roots> verify required` to the server side.
Server side: frontend `ssl crt <db> ca-file <roots> verify required` → the app. Both TLS 1.3 only with one
cipher suite (the one OpenSSL and Python prefer: TLS_AES_256_GCM_SHA384), `nbthread 1`, no logging.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

CIPHERSUITE = "TLS_AES_256_GCM_SHA384"
APP_BODY = "hello from the bench app\n"

_GLOBAL = f"""global
    nbthread 1
    maxconn 4096
    ssl-default-bind-ciphersuites {CIPHERSUITE}
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-ciphersuites {CIPHERSUITE}
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode {{mode}}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
"""


def ensure_haproxy() -> str:
    """The path of haproxy, installing the Debian package when it is missing (the benchmarks run as root)."""
    found = shutil.which("haproxy") or (Path("/usr/sbin/haproxy").is_file() and "/usr/sbin/haproxy")
    if found:
        return str(found)
    print(">>> haproxy is not installed; installing it with `apt-get install -y haproxy` (Debian package)...",
          flush=True)
    subprocess.run(["apt-get", "install", "-y", "haproxy"], check=True, stdout=subprocess.DEVNULL)
    found = shutil.which("haproxy") or (Path("/usr/sbin/haproxy").is_file() and "/usr/sbin/haproxy")
    if not found:
        sys.exit("haproxy is still missing after apt-get install; install it (make system-deps) and re-run")
    return str(found)


def version(haproxy: str) -> str:
    """`HAProxy version 2.6.12-…` as haproxy prints it."""
    out = subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "haproxy (version unknown)"


def app_config(host: str, port: int) -> str:
    """haproxy as the application: every request answered 200 with a fixed small body, keep-alive, in C, so
    the app is never what the pairs measure."""
    body = APP_BODY.replace("\n", "\\n")
    return _GLOBAL.format(mode="http") + f"""
frontend app
    bind {host}:{port}
    http-request return status 200 content-type text/plain string "{body}"
"""


def server_config(mode: str, bind: tuple[str, int], crt: Path, ca: Path, app: tuple[str, int]) -> str:
    """The server-side sidecar's stand-in: terminate mTLS (client certificate required), forward to the app.
    In http mode one ACL per request (a deny on /admin) stands for our L7 intention check."""
    acl = "    http-request deny deny_status 403 if { path_beg /admin }\n" if mode == "http" else ""
    return _GLOBAL.format(mode=mode) + f"""
frontend public
    bind {bind[0]}:{bind[1]} ssl crt {crt} ca-file {ca} verify required
{acl}    default_backend app

backend app
    server app {app[0]}:{app[1]}
"""


def client_config(mode: str, bind: tuple[str, int], crt: Path, ca: Path, server: tuple[str, int]) -> str:
    """The client-side sidecar's stand-in: plain listener, mTLS to the server side presenting `crt`, the
    server's certificate verified against `ca` (haproxy resumes TLS sessions towards it by default)."""
    return _GLOBAL.format(mode=mode) + f"""
frontend upstream
    bind {bind[0]}:{bind[1]}
    default_backend mesh

backend mesh
    server db {server[0]}:{server[1]} ssl crt {crt} ca-file {ca} verify required
"""


def command(haproxy: str, config: Path) -> list[str]:
    """haproxy in the foreground (`-db`) on one config file, so its PID is the process that serves."""
    return [haproxy, "-db", "-f", str(config)]


def check_config(haproxy: str, config: Path) -> None:
    """Exit with haproxy's own message when it refuses `config` (`-c`)."""
    done = subprocess.run([haproxy, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"haproxy refused {config}:\n{done.stdout}{done.stderr}")
