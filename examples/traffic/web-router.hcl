# First match wins; anything else takes the default route to web (and so through the splitter).
# HCL2: write `Match = { HTTP = { ... } }`, not Consul's HCL1 `Match { HTTP { ... } }` inside a list.
Kind = "service-router"
Name = "web"
Routes = [
  {
    # /admin/users reaches the admin service as /users.
    Match       = { HTTP = { PathPrefix = "/admin" } }
    Destination = { Service = "admin", PrefixRewrite = "/" }
  },
  {
    # Testers pin themselves to the canary with a header.
    Match       = { HTTP = { Header = [{ Name = "x-canary", Exact = "1" }] } }
    Destination = { ServiceSubset = "v2" }
  },
]
