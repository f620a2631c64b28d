"""training: see the package docstring in README."""
