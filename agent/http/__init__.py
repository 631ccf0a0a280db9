"""meshagent.agent.http: the HTTP/1.1 server (trio + h11) and Consul's `/v1` API.

    api = API(agent)                                   # agent: an AgentView (view.py), e.g. the Agent
    server = HTTPServer(api, config.client_addr, config.ports.http)
    port = await nursery.start(server.run)             # port 0 picks a free port; also server.bound_port

Modules: server (connections, framing, limits, timeouts), messages (Request, Response, Handler), body
(streamed request bodies), parking (blocking queries ended on hang-up), upload (a streamed body to a file),
view (AgentView: what the API needs from an agent), api (routing, blocking reads, response cache), errors
(the one exception -> response table), query (common query options), filter (`?filter=` go-bexpr subset),
render (the only place Consul's JSON shapes are built), and one module per area: catalog_api,
catalog_write_api, health_api, kv_api, event_api, agent_api, operator_api (/v1/status, raft, snapshot,
keyring).
"""
