# The "db" service on a client VM: anything accepting TCP on :5432 (the provisioning starts a stand-in).
service {
  name = "db"
  port = 5432
  tags = ["primary"]
  check {
    id       = "db-tcp"
    name     = "TCP on :5432"
    tcp      = "127.0.0.1:5432"
    interval = "10s"
    timeout  = "2s"
  }
}
