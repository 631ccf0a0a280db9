# db's sidecar (db-sidecar-proxy, port 21000-21255) takes mutual TLS from other sidecars and forwards what
# the intentions allow to the application on 127.0.0.1:5432.
service {
  name  = "db"
  port  = 5432
  check { tcp = "127.0.0.1:5432"  interval = "1s" }
  connect { sidecar_service {} }
}
