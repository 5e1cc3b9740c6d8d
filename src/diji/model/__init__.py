"""Stage 3: the transformer (`transformer.py`, one readable file), KV-cached generation, and options."""
