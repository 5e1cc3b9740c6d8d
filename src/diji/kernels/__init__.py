"""Stage 1: the operator library. Every op the model uses has a plain reference implementation here;
fast paths register beside them and are chosen once per (device, dtype)."""
