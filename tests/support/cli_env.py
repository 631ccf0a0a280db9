"""The environment variables the CLI reads for the agent's address and token, for tests that must not
inherit them: pass `ENV_CLEAR` (each set to None) to click's CliRunner `env`."""

from __future__ import annotations

ENV_CLEAR: dict[str, str | None] = {
    name: None for name in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "MESH_HTTP_TOKEN", "MESH_HTTP_TOKEN_FILE",
                            "CONSUL_HTTP_ADDR", "MESH_HTTP_ADDR")}
