"""The papers' architecture tables, one module per paper (v1.py to v5.py; spec.py holds the row types). Each
registers its variants with the registry when imported; ``mobilenets/__init__`` imports them all."""
from .spec import Architecture

__all__ = ["Architecture"]
