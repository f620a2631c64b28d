"""pcamflow: reproducible PatchCamelyon training and evaluation."""

__version__ = "0.1.0"
