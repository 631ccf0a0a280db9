# Two subsets of web by the instances' Meta.version (sidecars inherit their service's Meta). Requests with
# no subset go to v1. When v2 has no healthy instance, its traffic goes to v1's instances instead.
Kind           = "service-resolver"
Name           = "web"
DefaultSubset  = "v1"
ConnectTimeout = "5s"
Subsets = {
  v1 = { Filter = "Service.Meta.version == v1" }
  v2 = { Filter = "Service.Meta.version == v2" }
}
Failover = {
  v2 = { ServiceSubset = "v1" }
}
