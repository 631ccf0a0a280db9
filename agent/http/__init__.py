"""meshagent.agent.http: the HTTP/1.1 server (trio + h11) and Consul's `/v1` API.

    api = API(agent)                                   # agent: config, node_name, node_id, datacenter,
                                                       #        store (CatalogStore), local (LocalState),
                                                       #        members(), reload(), shutdown()
    server = HTTPServer(api, config.client_addr, config.ports.http)
    port = await nursery.start(server.run)             # port 0 picks a free port; also server.bound_port

Modules: server (transport), api (routing, blocking reads, response cache, error mapping), query (common
query options), filter (`?filter=` go-bexpr subset), render (Consul-shaped JSON), and one module per area:
catalog_api, health_api, kv_api, agent_api (also /v1/status).
"""
