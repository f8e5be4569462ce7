"""A grid of GLUE fine-tuning runs (batch size x learning rate), as the paper's sweep: the best dev score per task."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from perceiver_lm.options import options_record
from perceiver_lm.run_dir import check_output_folder, claim_folder, is_main_rank, refuse_non_empty, write_json_atomic
from tasks.finetune.finetune import finetune
from tasks.finetune.options import GlueOptions
from tasks.finetune.own import job_tasks
from tasks.finetune.predict import primary_score
from tasks.glue.tasks import GlueTask


def sweep(options: GlueOptions, batch_sizes: list[int], lrs: list[float]) -> dict[str, Any]:
    """Fine-tune once per (batch size, lr) grid point; keep the best dev score per task.

    Each grid point runs into ``output_dir/bs{B}_lr{LR}``; the summary goes to ``output_dir/sweep.json``.
    """
    tasks = job_tasks(options)
    output = check_output_folder(options.output_dir, "--output-dir")
    hint = "pick another --output-dir, or pass --overwrite to rerun the sweep there"
    main_rank = is_main_rank()  # under `accelerate launch` the main process holds the lock
    with claim_folder(
        output,
        "--output-dir",
        lambda: options.overwrite or refuse_non_empty(output, "--output-dir", hint),
        lock=main_rank,
    ):
        return _sweep(options, tasks, output, batch_sizes, lrs, main_rank)


def _sweep(
    options: GlueOptions,
    tasks: list[GlueTask],
    output: Path,
    batch_sizes: list[int],
    lrs: list[float],
    main_rank: bool = True,
) -> dict[str, Any]:
    runs, best = [], {}
    for batch_size, lr in itertools.product(batch_sizes, lrs):
        point = dataclasses.replace(
            options, batch_size=batch_size, lr=lr, output_dir=str(Path(options.output_dir) / f"bs{batch_size}_lr{lr:g}")
        )
        result = finetune(point)
        runs.append({"batch_size": batch_size, "lr": lr, "best": result.best, "output_dir": str(result.output_dir)})
        for task in tasks:
            entry = result.best[task.name]
            if task.name not in best or primary_score(task, entry["scores"]) > primary_score(
                task, best[task.name]["scores"]
            ):
                best[task.name] = {**entry, "batch_size": batch_size, "lr": lr, "output_dir": str(result.output_dir)}
    summary = {
        "options": options_record(options),
        "grid": {"batch_size": batch_sizes, "lr": lrs},
        "best": best,
        "runs": runs,
    }
    if main_rank:
        write_json_atomic(output / "sweep.json", summary)
    return summary
