"""Pictures of what a model does: attention maps (summaries, PNG, HTML page) and training curves."""
