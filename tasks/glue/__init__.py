"""GLUE fine-tuning with the multi-task query decoder (to come)."""
