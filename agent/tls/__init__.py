"""TLS for the server port :8300: certificates (files, keyring-derived CA, auto_encrypt) and SSL contexts."""
