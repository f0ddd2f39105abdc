"""xtf: stamped, migratable x-transformers-compatible checkpoints."""

__version__ = "0.1.0"
