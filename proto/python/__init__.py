"""cardmint.v1: Python code generated from proto/cardmint/v1/*.proto (do not edit)."""
