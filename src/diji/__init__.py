"""diji (地基): build your own large language models end to end, on whatever hardware you have.

Nothing happens at import: sub-packages are imported by whoever needs them.
"""

__version__ = "0.1.0"
