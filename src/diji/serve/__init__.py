"""Stage 5: generation from the command line, the batched engine and the OpenAI-compatible server."""
