"""Stage 6: serving policies (keyword/regex moderation, PII redaction, limits), rate limits, audit log.

What this covers and what it does not is stated in `diji.safety.policy`'s docstring and docs/serving.md.
"""
