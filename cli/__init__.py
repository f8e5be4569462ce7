"""Command-line interface of perceiver-lm (``perceiver-lm`` console script)."""
