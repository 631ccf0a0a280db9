# First match wins; anything else takes the default route to web (and so through the splitter).
# HCL2: write `Match = { HTTP = { ... } }`, not Consul's HCL1 `Match { HTTP { ... } }` inside a list.
Kind = "service-router"
Name = "web"
Routes = [
  {
    # /admin/users reaches the admin service as /users, /admin/ as /. Consul's pattern: the prefix ends
    # with "/", so /admin and /administrator are not matched (they go to web); with PathPrefix "/admin"
    # and PrefixRewrite "/", /admin/users would arrive as //users.
    Match       = { HTTP = { PathPrefix = "/admin/" } }
    Destination = { Service = "admin", PrefixRewrite = "/" }
  },
  {
    # Testers pin themselves to the canary with a header.
    Match       = { HTTP = { Header = [{ Name = "x-canary", Exact = "1" }] } }
    Destination = { ServiceSubset = "v2" }
  },
]
