"""evaluation: see the package docstring in README."""
