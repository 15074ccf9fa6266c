"""east_ds: entropy-based adaptive weighting for self-training (arXiv 2503.23913)."""

__version__ = "0.1.0"
