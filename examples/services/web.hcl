# An example service definition: drop files like this into a -config-dir, then `meshagent reload`.
service {
  name = "web"
  port = 8080
  tags = ["v1"]
  meta = { version = "1" }
  check {
    name     = "agent API answers"
    http     = "http://127.0.0.1:8500/v1/status/leader"
    interval = "10s"
  }
}
