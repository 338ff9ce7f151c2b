"""The papers' architecture tables, one module per paper (v1.py, v2.py, v3.py). Each registers its variants
with the registry when imported; ``mobilenets/__init__`` imports them all."""
from .spec import Architecture

__all__ = ["Architecture"]
