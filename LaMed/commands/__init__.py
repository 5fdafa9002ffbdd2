"""Sub-commands of the ``lamed`` CLI, one module each (see LaMed/cli.py)."""
