"""Downstream tasks built on perceiver_lm: fine-tuning (tasks.finetune) and GLUE as a source of tasks (tasks.glue)."""
