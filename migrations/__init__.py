"""The migration chain: one module per step, discovered by the engine."""
