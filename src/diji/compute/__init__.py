"""Stage 1: device discovery and policy. The only package allowed to name a vendor or device string."""
