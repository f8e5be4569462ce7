"""Masked-LM pretraining through Hugging Face Accelerate: one loop from one CPU to many GPUs."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    file_overlap,
    load_corpus,
    load_files,
    load_hf_texts,
    shown_path,
    split_corpus,
    spread,
)
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.evaluation import masked_byte_stats, masked_lm_loss, summarize
from perceiver_lm.interop import is_transformers_folder, load_from_transformers
from perceiver_lm.model import PerceiverLM
from perceiver_lm.optim import Lamb, adamw, parameter_groups
from perceiver_lm.options import TrainingOptions
from perceiver_lm.resume import TrainState
from perceiver_lm.run_dir import is_main_rank
from perceiver_lm.runtime import default_workers
from perceiver_lm.trainer import Data, Run, Schedule, train


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
    output = Path(options.output_dir)
    corpus = load_corpus(options, builtin_corpus, exclude=output)
    if options.val_data:
        val_corpus = load_files(options.val_data, "--val-data", exclude=output)
        shared = file_overlap(corpus.file_paths, val_corpus.file_paths)
        if shared is not None:
            raise PerceiverLMError(
                f"--val-data {shown_path(shared)}: is also a training file (--data); validation must be held-out "
                "text: give other files, or leave --val-data out to hold out the end of --data"
            )
        train_part, val_part = CorpusRange(corpus, 0, len(corpus)), CorpusRange(val_corpus, 0, len(val_corpus))
    else:
        train_part, val_part = split_corpus(corpus, window, options.val_fraction)
    train = MaskedWindows(train_part, window, masking, options.seed)
    val_all = MaskedWindows(val_part, window, masking, val_seed, shuffle=False)
    description = f"{corpus.name}: {len(train_part):,} training bytes, {len(val_part):,} validation bytes"
    return PretrainData(train, Subset(val_all, spread(len(val_all), options.eval_windows)), description)


def evaluate(model: torch.nn.Module, loader: DataLoader, accelerator) -> dict[str, float]:
    """Masked-byte loss (nats), bits per masked byte and accuracy over the validation loader."""
    scores = summarize(masked_byte_stats(model, loader, accelerator))
    return {"loss": scores["loss"], "bits_per_byte": scores["bits_per_byte"], "accuracy": scores["accuracy"]}


def _tracker_config(options: TrainingOptions, config: PerceiverConfig) -> dict[str, Any]:
    flat = {**{f"model/{k}": v for k, v in config.to_dict().items()}, **dataclasses.asdict(options)}
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}


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


def model_shape(options: TrainingOptions, config: PerceiverConfig | None) -> tuple[PerceiverConfig, PerceiverLM | None]:
    """The model a run trains (its shape, and the ``--init-from`` model it starts from, if any)."""
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
    return (init.config if init is not None else config or get_preset("small")), init


class MaskedLM:
    """Masked-LM pretraining as a job of the training loop (`perceiver_lm.trainer.train`)."""

    name = "pretrain"
    slots = ("train",)
    produced = ()

    def __init__(self, options: TrainingOptions, config: PerceiverConfig | None = None) -> None:
        self.options = options
        self.config, self.init = model_shape(options, config)
        self.window = options.window or self.config.max_seq_len
        if self.window > self.config.max_seq_len:
            raise PerceiverLMError(
                f"--window {self.window} is longer than the model's max_seq_len ({self.config.max_seq_len})"
            )
        # A stream's training part starts after the --eval-windows validation windows.
        self.also_data_order = ("eval_windows",) if options.streaming else ()
        self.description = ""
        self.workers = 0

    def accelerator_kwargs(self, output: Path) -> dict[str, Any]:
        tracker = _tracker(self.options)
        if tracker == "tensorboard" and not _utf8(output):
            # TensorBoard's writer fails on a folder name that is not UTF-8; metrics.jsonl holds the same records.
            if self.options.report_to == "tensorboard":
                raise PerceiverLMError(
                    f"--report-to tensorboard: TensorBoard cannot write under {shown_path(output)} (not UTF-8); "
                    "choose another --output-dir or --report-to none"
                )
            tracker = "none"
        return {"log_with": None if tracker == "none" else tracker, "project_dir": str(output)}

    def build_model(self, source: Path | None) -> PerceiverLM:
        model = self.init.train() if self.init is not None and source is None else PerceiverLM(self.config)
        if source is not None:
            self.init = None  # a resumed run takes its checkpoint's weights
        model.gradient_checkpointing_enable(self.options.gradient_checkpointing)
        return model

    def build_data(self, model: PerceiverLM, accelerator: Any) -> Data:
        options, processes = self.options, accelerator.num_processes
        data = build_data(options, self.window, accelerator.process_index, processes)
        streaming = isinstance(data.train, StreamingWindows)
        if not streaming and len(data.train) < options.batch_size * processes:
            raise PerceiverLMError(
                f"training data ({data.description}) holds {len(data.train)} window(s) of {self.window} bytes, "
                f"fewer than one batch ({options.batch_size} x {processes} process(es)); "
                "add data, or lower --batch-size or --window"
            )
        gpu = accelerator.device.type == "cuda"
        self.workers = default_workers(gpu) if options.num_workers is None else options.num_workers
        loader = dict(
            batch_size=options.batch_size, collate_fn=collate_masked, num_workers=self.workers, pin_memory=gpu
        )
        # Full batches only: every step sees the same number of windows, in a resumed run too.
        train = DataLoader(data.train, drop_last=not streaming, **loader)
        self.description = data.description
        return Data(train, [DataLoader(data.val, **loader)], "bytes", self.window * options.batch_size, streaming)

    def build_optimizer(self, model: PerceiverLM) -> torch.optim.Optimizer:
        groups = parameter_groups(model, self.options.weight_decay)
        return (Lamb if self.options.optimizer == "lamb" else adamw)(groups, lr=self.options.lr)

    def schedule(self, batches_per_epoch: int | None) -> Schedule:
        return Schedule.of(self.options)

    def started(self, run: Run, state: TrainState, source: Path | None) -> str:
        if run.streaming:  # the stream is split over processes x workers: a resumed run must split it the same way
            saved = state.job.setdefault("stream_workers", self.workers)
            if saved != self.workers:
                raise PerceiverLMError(
                    f"{source}: cannot resume, the stream was split over {saved} DataLoader worker(s) per process "
                    f"and would now be split over {self.workers}; pass --num-workers {saved}"
                )
        run.accelerator.init_trackers("pretrain", config=_tracker_config(self.options, self.config))
        run.say(self.description)
        options, processes = self.options, run.accelerator.num_processes
        start = f"weights from {options.init_from}; " if self.init is not None else ""
        return f"{start}batch {options.batch_size}x{processes}x{options.grad_accum} windows of {self.window} bytes"

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = model(batch["input_ids"], query_positions=batch["query_positions"]).logits
        return masked_lm_loss(logits, batch["labels"]), 0

    def validate(self, run: Run, state: TrainState, train_loss: dict[str, float]) -> dict[str, float]:
        metrics = evaluate(run.model, run.eval_loaders[0], run.accelerator)
        run.log({"step": state.step, **{f"eval_{k}": v for k, v in metrics.items()}, "elapsed_s": state.elapsed_s})
        run.say(
            f"\nstep {state.step}: eval loss {metrics['loss']:.4f}, {metrics['bits_per_byte']:.3f} bits/masked byte, "
            f"accuracy {metrics['accuracy']:.3f}"
        )
        return metrics

    def card(self) -> list[str]:
        options = self.options
        data = (
            options.dataset
            or ", ".join(map(shown_path, options.data))
            or "the built-in corpus (Python documentation topics)"
        )
        lines = [f"- Pretrained (masked bytes) on: {data}"]
        return lines + (
            [f"- Started from the weights of: {shown_path(options.init_from)}"] if options.init_from else []
        )


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
    state = train(options, MaskedLM(options, config), accelerator)
    main = accelerator.is_main_process if accelerator is not None else is_main_rank()
    return PretrainResult(Path(options.output_dir), state.step, state.checkpoint, state.last_eval, main)


def _utf8(path: Path) -> bool:
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _tracker(options: TrainingOptions) -> str:
    if options.report_to != "auto":
        return options.report_to
    try:
        import tensorboard  # noqa: F401

        return "tensorboard"
    except ImportError:
        return "none"
