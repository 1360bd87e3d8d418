"""sert — Self-Enhanced Reasoning Training (arXiv 2502.12744) as a Hydra-configured framework."""

__version__ = "0.1.0"
