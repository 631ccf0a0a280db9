# frontend calls web through its sidecar: plain HTTP to 127.0.0.1:9191, and the sidecar follows web's chain
# (router -> splitter -> resolver) for each request.
service {
  name = "frontend"
  port = 8080
  connect {
    sidecar_service {
      proxy {
        upstreams = [{ destination_name = "web", local_bind_port = 9191 }]
      }
    }
  }
}
