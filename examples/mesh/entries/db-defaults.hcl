# db speaks HTTP: its sidecars parse requests, so intentions can decide per request (L7).
Kind     = "service-defaults"
Name     = "db"
Protocol = "http"
