"""The papers' architecture tables, one module per paper. Importing registers the variants."""
from . import v1, v2, v3  # noqa: F401
from .spec import Architecture

__all__ = ["Architecture"]
