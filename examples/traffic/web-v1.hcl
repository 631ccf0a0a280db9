# web, version 1: the app listens on 127.0.0.1:8081; its sidecar (port 21000-21255) takes mutual TLS.
service {
  id    = "web-v1"
  name  = "web"
  port  = 8081
  meta  = { version = "v1" }
  check { http = "http://127.0.0.1:8081/"  interval = "1s" }
  connect { sidecar_service {} }
}
