"""GLUE as a source of fine-tuning tasks: the nine tasks' table, the original distribution's TSV reader, and
GLUE's metric as an `evaluate` module. Fine-tuning itself lives in `tasks.finetune`."""
