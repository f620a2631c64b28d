"""data: see the package docstring in README."""
