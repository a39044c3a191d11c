"""regfs: a container registry as a read-only filesystem."""
