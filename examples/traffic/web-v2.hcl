# web, version 2 (the canary): the app listens on 127.0.0.1:8082. Stop it and its check goes critical:
# the resolver's failover sends v2's share to v1.
service {
  id    = "web-v2"
  name  = "web"
  port  = 8082
  meta  = { version = "v2" }
  check { http = "http://127.0.0.1:8082/"  interval = "1s" }
  connect { sidecar_service {} }
}
