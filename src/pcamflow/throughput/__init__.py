"""throughput: see the package docstring in README."""
