# admin: the app listens on 127.0.0.1:8083; web's router sends /admin here.
service {
  name = "admin"
  port = 8083
  check { http = "http://127.0.0.1:8083/"  interval = "1s" }
  connect { sidecar_service {} }
}
