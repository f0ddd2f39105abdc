"""The model core: x-transformers-compatible modules (same names, keyword arguments, state-dict names).

Import the classes from `xtf_core` (loaded on first use); this package imports nothing itself.
"""
