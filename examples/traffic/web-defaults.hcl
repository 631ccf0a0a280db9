# web speaks HTTP: its callers' sidecars parse requests, so routers and splitters apply to it (on tcp, the
# default, only the resolver would).
Kind     = "service-defaults"
Name     = "web"
Protocol = "http"
