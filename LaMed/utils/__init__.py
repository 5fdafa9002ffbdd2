"""Small shared utilities (registries, logging, paths)."""
