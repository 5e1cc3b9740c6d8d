"""Stage 3: pretraining, SFT, LoRA and GRPO — one shared loop (`loop.py`); each stage adds its own part."""
