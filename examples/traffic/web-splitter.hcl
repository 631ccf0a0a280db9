# The canary: 90 % of web's requests to v1, 10 % to v2 (weights in percent, 0.01 steps, summing to 100).
Kind = "service-splitter"
Name = "web"
Splits = [
  { Weight = 90, ServiceSubset = "v1" },
  { Weight = 10, ServiceSubset = "v2" },
]
