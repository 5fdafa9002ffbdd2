"""Preparation of public datasets into the prepared format (one module a dataset)."""
