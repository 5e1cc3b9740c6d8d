"""Command-line option vocabularies that several commands share (imported when the parser is built, so
nothing heavy here: no torch)."""

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""What --dtype accepts on generate, chat, eval and serve."""
DTYPE_HELP = ("weights' dtype: auto keeps a bf16/fp16 checkpoint's own precision where this device is fast at it "
              "and uses float32 otherwise (default: auto)")
