# The "web" service on a client VM: anything answering HTTP on :80 (the provisioning starts a stand-in).
service {
  name = "web"
  port = 80
  tags = ["vagrant"]
  check {
    id       = "web-http"
    name     = "HTTP on :80"
    http     = "http://127.0.0.1:80/"
    interval = "10s"
    timeout  = "2s"
  }
}
