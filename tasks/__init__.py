"""Downstream tasks built on perceiver_lm (GLUE fine-tuning lives in tasks.glue)."""
