"""ACLs (issue 15): the pure core — rule language, authorizer, secrets. Nothing here does I/O."""
