"""Stage 6: metrics logs, training reports with plots, and lineage."""
