# admin speaks HTTP too: a router may only send requests to an HTTP service.
Kind     = "service-defaults"
Name     = "admin"
Protocol = "http"
