"""Checkpoint files: safetensors headers (stdlib only), stamps and metadata keys, atomic writes, byte moves."""
