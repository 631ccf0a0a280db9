# web may call db, but not db's /admin: a 403 from db's sidecar, naming the intention.
Kind = "service-intentions"
Name = "db"
Sources = [
  {
    Name = "web"
    Permissions = [
      { Action = "deny",  HTTP = { PathPrefix = "/admin" } },
      { Action = "allow", HTTP = { PathPrefix = "/" } },
    ]
  },
]
