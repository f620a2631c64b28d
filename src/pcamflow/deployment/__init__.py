"""deployment: see the package docstring in README."""
