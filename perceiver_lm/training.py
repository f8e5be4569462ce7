"""Masked-LM pretraining through Hugging Face Accelerate: one loop from one CPU to many GPUs."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from perceiver_lm.checkpoint import list_checkpoints, read_model_dir
from perceiver_lm.config import PerceiverConfig, get_preset
from perceiver_lm.data import (
    CorpusRange,
    MaskedWindows,
    MaskingOptions,
    StreamingWindows,
    builtin_corpus,
    collate_masked,
    corpus_from_texts,
    load_files,
    load_hf_texts,
    split_corpus,
)
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.evaluation import masked_byte_stats, masked_lm_loss, summarize
from perceiver_lm.interop import is_transformers_folder, load_from_transformers
from perceiver_lm.model import PerceiverLM
from perceiver_lm.optim import Lamb, adamw, parameter_groups
from perceiver_lm.options import TrainingOptions
from perceiver_lm.trainer import (
    METRICS_FILE,
    Run,
    Schedule,
    TrainState,
    check_resume,
    default_workers,
    finish_trackers,
    fit,
    restore,
    resume_source,
    run_folder,
    use_accelerator,
)

# Options that decide which windows each step sees: a resumed run must keep them to continue the same order.
DATA_ORDER_OPTIONS = (
    "window",
    "data",
    "dataset",
    "dataset_config",
    "dataset_split",
    "text_column",
    "streaming",
    "val_data",
    "val_fraction",
    "batch_size",
    "grad_accum",
    "seed",
    "mask_rate",
    "mask_unit",
    "init_from",
)


@dataclass
class PretrainResult:
    """What `pretrain` returns: where the run lives and how it ended."""

    output_dir: Path
    step: int
    checkpoint: Path | None
    eval_metrics: dict[str, float]
    main_process: bool = True


@dataclass
class PretrainData:
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    description: str


def build_data(options: TrainingOptions, window: int, rank: int = 0, world: int = 1) -> PretrainData:
    """Training windows and fixed validation windows from the configured source (a stream split by ``rank``)."""
    masking = MaskingOptions(options.mask_rate, options.mask_unit == "word")
    val_seed = options.seed + 7919  # validation masking never changes between evaluations
    if options.dataset and options.streaming:

        def texts():
            return load_hf_texts(
                options.dataset, options.dataset_config, options.dataset_split, options.text_column, True
            )

        head = StreamingWindows(texts, window, masking, val_seed)
        val = [example for _, example in zip(range(options.eval_windows), head, strict=False)]
        if len(val) < options.eval_windows:
            raise PerceiverLMError(
                f"--dataset {options.dataset}: stream holds fewer than {options.eval_windows + 1} windows"
            )
        train = StreamingWindows(texts, window, masking, options.seed, len(val), rank, world)
        return PretrainData(train, val, f"{options.dataset} (streaming)")
    if options.dataset:
        corpus = corpus_from_texts(
            load_hf_texts(options.dataset, options.dataset_config, options.dataset_split, options.text_column, False),
            f"--dataset {options.dataset}",
        )
    elif options.data:
        corpus = load_files(options.data)
    else:
        corpus = builtin_corpus()
    if options.val_data:
        val_corpus = load_files(options.val_data)
        train_part, val_part = CorpusRange(corpus, 0, len(corpus)), CorpusRange(val_corpus, 0, len(val_corpus))
    else:
        train_part, val_part = split_corpus(corpus, window, options.val_fraction)
    train = MaskedWindows(train_part, window, masking, options.seed)
    val_all = MaskedWindows(val_part, window, masking, val_seed, shuffle=False)
    picks = np.unique(np.linspace(0, len(val_all) - 1, min(options.eval_windows, len(val_all))).round().astype(int))
    description = f"{corpus.name}: {len(train_part):,} training bytes, {len(val_part):,} validation bytes"
    return PretrainData(train, Subset(val_all, picks.tolist()), description)


def evaluate(model: torch.nn.Module, loader: DataLoader, accelerator) -> dict[str, float]:
    """Masked-byte loss (nats), bits per masked byte and accuracy over the validation loader."""
    scores = summarize(masked_byte_stats(model, loader, accelerator))
    return {"loss": scores["loss"], "bits_per_byte": scores["bits_per_byte"], "accuracy": scores["accuracy"]}


def _tracker_config(options: TrainingOptions, config: PerceiverConfig) -> dict[str, Any]:
    flat = {**{f"model/{k}": v for k, v in config.to_dict().items()}, **dataclasses.asdict(options)}
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}


class MaskedLM:
    """Masked-LM pretraining as a job of the training loop (`perceiver_lm.trainer.fit`)."""

    name = "pretrain"
    slots = ("train",)

    def __init__(self, val_loader: DataLoader) -> None:
        self.val_loader = val_loader

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = model(batch["input_ids"], query_positions=batch["query_positions"]).logits
        return masked_lm_loss(logits, batch["labels"]), 0

    def validate(self, run: Run, state: TrainState, train_loss: dict[str, float]) -> dict[str, float]:
        metrics = evaluate(run.model, self.val_loader, run.accelerator)
        run.log({"step": state.step, **{f"eval_{k}": v for k, v in metrics.items()}, "elapsed_s": state.elapsed_s})
        run.say(
            f"\nstep {state.step}: eval loss {metrics['loss']:.4f}, {metrics['bits_per_byte']:.3f} bits/masked byte, "
            f"accuracy {metrics['accuracy']:.3f}"
        )
        return metrics


def initial_model(source: str) -> PerceiverLM:
    """The masked LM that ``--init-from`` names: a perceiver-lm checkpoint or run directory, or a
    transformers ``PerceiverForMaskedLM`` folder (converted on the fly)."""
    try:
        if is_transformers_folder(source):
            return load_from_transformers(source)
        directory, _, tasks = read_model_dir(source)
        if tasks is not None:
            raise PerceiverLMError(
                f"{directory}: a fine-tuned task model (task heads, no masked-LM decoder); continued pretraining "
                "starts from a masked LM checkpoint"
            )
        return PerceiverLM.from_pretrained(directory)
    except PerceiverLMError as err:
        raise PerceiverLMError(f"--init-from {err}") from None


def pretrain(
    options: TrainingOptions, config: PerceiverConfig | None = None, accelerator: Any = None
) -> PretrainResult:
    """Pretrain a masked byte LM with Accelerate (one process or ``accelerate launch``).

    The run holds a lock on ``options.output_dir`` while it runs: a second run there is refused.

    Args:
        options: training options (data, schedule, evaluation, checkpoints, ``init_from``).
        config: model shape, usually a preset; default: the ``init_from`` model's shape, else ``small``.
            With ``init_from`` it must be that model's shape.
        accelerator: the Accelerator to train with; default: one built from the options (precision,
            gradient accumulation, tracker).
    """
    resuming = options.resume and bool(list_checkpoints(options.output_dir))
    if options.init_from and resuming:
        # The run's own checkpoints hold its weights: the model it started from is not needed (nor must it exist).
        config = config or read_model_dir(options.output_dir)[1]
    init = initial_model(options.init_from) if options.init_from and not resuming else None
    if init is not None and config is not None and config != init.config:
        raise PerceiverLMError(
            f"--init-from {options.init_from}: its model shape differs from the given config "
            f"({init.config.differences(config, 'checkpoint', 'given')}); leave out --preset and [model] to take "
            "the checkpoint's shape"
        )
    config = init.config if init is not None else config or get_preset("small")
    window = options.window or config.max_seq_len
    if window > config.max_seq_len:
        raise PerceiverLMError(f"--window {window} is longer than the model's max_seq_len ({config.max_seq_len})")
    with run_folder(options, (METRICS_FILE,)) as output:
        tracker = _tracker(options)
        accelerator, precision = use_accelerator(
            accelerator,
            options.mixed_precision,
            options.cpu,
            options.grad_accum,
            log_with=None if tracker == "none" else tracker,
            project_dir=str(output),
        )
        try:
            run, job, state = setup(options, config, window, output, accelerator, precision, init)
            fit(run, job, state)
        finally:
            finish_trackers(accelerator)
    return PretrainResult(output, state.step, state.checkpoint, state.last_eval, accelerator.is_main_process)


def _tracker(options: TrainingOptions) -> str:
    if options.report_to != "auto":
        return options.report_to
    try:
        import tensorboard  # noqa: F401

        return "tensorboard"
    except ImportError:
        return "none"


def setup(
    options: TrainingOptions,
    config: PerceiverConfig,
    window: int,
    output: Path,
    accelerator: Any,
    precision: str,
    init: PerceiverLM | None = None,
) -> tuple[Run, MaskedLM, TrainState]:
    """Model, optimizer, data and (with --resume) the checkpoint's state, prepared for `fit`.

    ``init`` is the model to start from (``--init-from``); a resumed run takes its checkpoint's weights instead.
    """
    from accelerate.utils import set_seed

    processes = accelerator.num_processes
    set_seed(options.seed)
    source = resume_source(output, options.resume)
    model = init.train() if init is not None and source is None else PerceiverLM(config)
    if source is not None:  # refuse a checkpoint that cannot continue this run before loading any data
        # A stream's training part starts after the --eval-windows validation windows.
        order = DATA_ORDER_OPTIONS + (("eval_windows",) if options.streaming else ())
        check_resume(source, model, options, order, processes)
    elif options.resume:
        accelerator.print(f"note: no checkpoint in {output} yet; starting from scratch", file=sys.stderr)
    data = build_data(options, window, accelerator.process_index, processes)
    streaming = isinstance(data.train, StreamingWindows)
    if not streaming and len(data.train) < options.batch_size * processes:
        raise PerceiverLMError(
            f"training data ({data.description}) holds {len(data.train)} window(s) of {window} bytes, "
            f"fewer than one batch ({options.batch_size} x {processes} process(es)); "
            "add data, or lower --batch-size or --window"
        )
    model.gradient_checkpointing_enable(options.gradient_checkpointing)
    groups = parameter_groups(model, options.weight_decay)
    optimizer = (Lamb if options.optimizer == "lamb" else adamw)(groups, lr=options.lr)
    gpu = accelerator.device.type == "cuda"
    workers = default_workers(gpu) if options.num_workers is None else options.num_workers
    loader_args = dict(batch_size=options.batch_size, collate_fn=collate_masked, num_workers=workers, pin_memory=gpu)
    # Full batches only: every step sees the same number of windows, in a resumed run too.
    train_loader = DataLoader(data.train, drop_last=not streaming, **loader_args)
    val_loader = DataLoader(data.val, **loader_args)
    if streaming:  # the stream splits itself by process; Accelerate would dispatch every batch from process 0
        model, optimizer, val_loader = accelerator.prepare(model, optimizer, val_loader)
    else:
        model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    schedule = Schedule.of(options)
    bytes_per_step = window * options.batch_size * processes * options.grad_accum
    run = Run(accelerator, model, optimizer, train_loader, output, schedule, options, ("bytes", bytes_per_step))
    run.streaming = streaming
    run.place_batches = streaming
    state = restore(run, source) if source is not None else TrainState()
    if streaming:  # the stream is split over processes x workers: a resumed run must split it the same way
        saved = state.job.setdefault("stream_workers", workers)
        if saved != workers:
            raise PerceiverLMError(
                f"{source}: cannot resume, the stream was split over {saved} DataLoader worker(s) per process and "
                f"would now be split over {workers}; pass --num-workers {saved}"
            )
    accelerator.init_trackers("pretrain", config=_tracker_config(options, config))
    start = f"weights from {options.init_from}; " if init is not None and source is None else ""
    run.say(
        f"{data.description}\nmodel: {start}{sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{processes} process(es) on {accelerator.device}, {precision}; "
        f"batch {options.batch_size}x{processes}x{options.grad_accum} windows of {window} bytes"
    )
    return run, MaskedLM(val_loader), state
