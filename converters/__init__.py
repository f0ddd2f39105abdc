"""Converters that bring unstamped checkpoints into the stamped format."""
