"""The mesh control plane: service identities (SPIFFE IDs), the CA, intentions and config entries."""
