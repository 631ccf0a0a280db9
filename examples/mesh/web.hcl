# web calls db through its sidecar: the app talks plain TCP/HTTP to 127.0.0.1:9191, the mesh does the rest
# (finds db's healthy sidecars, dials them with mutual TLS as web, balances, retries).
service {
  name = "web"
  port = 8080
  connect {
    sidecar_service {
      proxy {
        upstreams = [{ destination_name = "db", local_bind_port = 9191 }]
      }
    }
  }
}
