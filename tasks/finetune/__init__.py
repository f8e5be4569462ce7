"""Fine-tuning with the multi-task query decoder: tasks of your own (files, task files, datasets) and built-in
ones (`tasks.glue`), task kinds (classification, regression, token classification), loaders, metrics, the
fine-tuning job, evaluation and predictions. `perceiver-lm finetune` (alias `glue`) is its command."""
