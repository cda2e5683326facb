"""tunewise: decide whether to fine-tune, then do it right."""

__version__ = "0.1.0"
