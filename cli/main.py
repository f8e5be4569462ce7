"""The ``perceiver-lm`` command line: parse options, build a config, call one library function.

Every command is generated from options dataclasses (`_command`): one CLI parameter per field, with
the field's help text; a field marked ``argument=True`` (`perceiver_lm.options.argument`) is
positional, a bool field is a flag (``--name/--no-name`` when on by default), a list field is
repeatable, a field with ``cli=False`` is for config files only. A field named ``config`` makes the command read that
JSON/TOML file: its keys fill the command's dataclasses, under the values given on the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from perceiver_lm.errors import PerceiverLMError, Terminated, bounded_message, one_line
from perceiver_lm.options import (
    AttentionOptions,
    ConvertOptions,
    EvalCheckpoint,
    EvalOptions,
    FillMaskOptions,
    InfoOptions,
    PlotOptions,
    PretrainModelOptions,
    TrainingOptions,
    flag,
    read_options_file,
)
from perceiver_lm.run_dir import check_output_file, write_json_atomic
from perceiver_lm.validation import check_fields
from tasks.finetune.options import GlueEvalOptions, GlueOptions, GluePredictOptions, GlueTrainOptions

DEBUG_VARIABLE = "PERCEIVER_LM_DEBUG"


class OneLineErrors(TyperGroup):
    """Usage errors (an unknown option, ``--batch-size abc``) as one ``error:`` line, exit status 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        for stream in (sys.stdout, sys.stderr):
            # A path may hold bytes that are not UTF-8 (decoded as surrogates): print them escaped rather than
            # fail on the last line of a run whose weights are already saved.
            if isinstance(stream, io.TextIOWrapper):
                stream.reconfigure(errors="backslashreplace")
        try:
            code = super().main(
                args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra
            )
        except Exception as err:
            # By name and shape: typer vendors click in some versions and uses the click package in others.
            if type(err).__name__ == "NoArgsIsHelpError":
                err.show()
                sys.exit(2)
            if type(err).__name__ == "Abort":
                typer.echo("error: aborted", err=True)
                sys.exit(1)
            if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
                raise
            command = f"{err.ctx.command_path}: " if getattr(err, "ctx", None) is not None else ""
            typer.echo(f"error: {bounded_message(command + ' '.join(err.format_message().split()))}", err=True)
            sys.exit(err.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors, add_completion=False, no_args_is_help=True, help="Byte-level Perceiver IO language models."
)
finetune_app = typer.Typer(
    no_args_is_help=True,
    help="Fine-tune, evaluate and predict: labelled texts, scores or tagged words from your files or a Hugging Face "
    "dataset (and GLUE tasks), one query and head per task.",
)
app.add_typer(finetune_app, name="finetune")
glue_app = typer.Typer(
    no_args_is_help=True,
    help="Fine-tune, evaluate and predict on GLUE with the multi-task query decoder (the same commands as "
    "`perceiver-lm finetune`).",
)
app.add_typer(glue_app, name="glue")


def user_errors(func):
    """The error boundary: an expected failure (bad input, a full disk, a corrupt file) is one line
    on stderr and exit status 2; PERCEIVER_LM_DEBUG=1 shows its traceback instead. Anything else
    is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("\ninterrupted; completed checkpoints are kept (continue a run with --resume)", err=True)
            raise typer.Exit(130) from None
        except Terminated as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(143) from None
        except Exception as err:
            message = one_line(err)
            if message is None or os.environ.get(DEBUG_VARIABLE) == "1":
                raise
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _cli_fields(options_class: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(options_class)
    return [(f, hints[f.name]) for f in dataclasses.fields(options_class) if f.metadata.get("cli", True)]


def _cli_type(hint: Any) -> Any:
    """The type typer parses a field as: X for ``X | None``, str for a Literal."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return str if typing.get_origin(hint) is typing.Literal else hint


def _parameter(f: dataclasses.Field, hint: Any) -> inspect.Parameter:
    """One CLI parameter for a field. Options read None when not given, so that a config file's value
    or the dataclass default applies; only a required argument has no default."""
    help_text = f.metadata["help"]
    if typing.get_origin(hint) is typing.Literal:
        help_text += f" (choices: {', '.join(typing.get_args(hint))})"
    value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    required = value is dataclasses.MISSING
    if f.metadata.get("argument"):
        info = typer.Argument(help=help_text, show_default=False)
    else:
        name = flag(f.name) + (f"/--no-{flag(f.name)[2:]}" if value is True else "")  # a default-on flag
        hidden = required or value is None or isinstance(value, bool) or value == []
        info = typer.Option(name, help=help_text + ("" if hidden else f" (default: {value})"), show_default=False)
    annotation = _cli_type(hint) if required else Optional[_cli_type(hint)]
    default = inspect.Parameter.empty if required else None
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[annotation, info]
    )


def _build(classes: tuple[type, ...], values: dict[str, Any], kind: str) -> list[Any]:
    """One instance per options class from the values given on the command line, over the ``--config``
    file's values when a class has a ``config`` field (unknown or mistyped keys name the file)."""
    given = [{f.name: values[f.name] for f, _ in _cli_fields(c) if values[f.name] not in (None, [])} for c in classes]
    path = next((g["config"] for g in given if "config" in g), None)
    parts: list[dict[str, Any]] = [{} for _ in classes]
    if path is not None:
        owner = {f.name: i for i, c in reversed(list(enumerate(classes))) for f in dataclasses.fields(c)}
        for key, value in read_options_file(path).items():
            parts[owner.get(key, 0) if key != "config" else 0][key] = value
        for options_class, part in zip(classes, parts, strict=True):
            check_fields(options_class, part, f"--config {path}", f"{kind} option")
    return [c(**{**p, **g}) for c, p, g in zip(classes, parts, given, strict=True)]


def _command(parent: typer.Typer, name: str, *classes: type, kind: str = "", help: str | None = None):
    """Register the decorated function as command ``name``: one CLI parameter per field of each options
    dataclass; the function gets one instance per class, its docstring (or ``help``) is the command's help."""
    parameters = [_parameter(f, hint) for c in classes for f, hint in _cli_fields(c)]
    names = [p.name for p in parameters]
    assert len(set(names)) == len(names), f"{name}: two options dataclasses share a field name"

    def register(func):
        def command(**values: Any) -> None:
            return user_errors(lambda: func(*_build(classes, values, kind)))()

        command.__signature__ = inspect.Signature(parameters)
        command.__doc__ = help or func.__doc__
        command.options_classes = classes  # what the command is generated from (tests read it)
        parent.command(name, help=command.__doc__)(command)
        return func

    return register


@_command(app, "pretrain", TrainingOptions, PretrainModelOptions, kind="training")
def _pretrain(options: TrainingOptions, model: PretrainModelOptions) -> None:
    """Pretrain a byte-level masked LM (defaults: `small` preset on the built-in corpus)."""
    from perceiver_lm.runtime import end_processes
    from perceiver_lm.training import pretrain

    config = model.config_for(options)
    try:
        result = pretrain(options, config)
    finally:
        end_processes()
    if result.eval_metrics and result.main_process:
        m = result.eval_metrics
        typer.echo(
            f"step {result.step}: validation {m['bits_per_byte']:.3f} bits per masked byte, "
            f"accuracy {m['accuracy']:.3f}; checkpoint {result.checkpoint}"
        )


def _check_new_file(path: Path, option: str, replace: bool) -> Path:
    """`check_output_file`, and refuse a path whose folder does not exist or cannot be written: found before
    any work, named as the user gave it (not as the temporary file the atomic write goes through)."""
    check_output_file(path, option, replace=replace)
    folder = path.parent
    if not folder.is_dir():
        raise PerceiverLMError(
            f"{option} {path}: folder {folder} does not exist; create it first, or pick another path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PerceiverLMError(f"{option} {path}: cannot write in folder {folder} (permission denied)")
    return path


def _write_json(path: Path, option: str, record: Any) -> None:
    """`write_json_atomic`, a failure (a full disk, a folder removed meanwhile) naming ``path``."""
    try:
        write_json_atomic(path, record)
    except OSError as err:
        raise PerceiverLMError(f"{option} {path}: cannot write ({err.strerror or type(err).__name__})") from None


@_command(app, "evaluate", EvalCheckpoint, EvalOptions)
def _evaluate(target: EvalCheckpoint, options: EvalOptions) -> None:
    """Score a pretrained checkpoint on held-out text: bits per masked byte and accuracy, per byte class."""
    from perceiver_lm.evaluation import score_text

    if options.json not in (None, "-"):
        _check_new_file(Path(options.json), "--json", replace=options.overwrite)
    report = score_text(target.checkpoint, options)
    if not report.main_process:
        return
    record = dataclasses.asdict(report)
    record.pop("main_process")
    if options.json == "-":
        typer.echo(report.table(), err=True)
        typer.echo(json.dumps(record, indent=2))
        return
    typer.echo(report.table())
    if options.json:
        _write_json(Path(options.json), "--json", record)
        typer.echo(f"wrote {options.json}")


@_command(app, "fill-mask", FillMaskOptions)
def _fill_mask(options: FillMaskOptions) -> None:
    """Fill the masked bytes of TEXT and print the filled text."""
    from perceiver_lm.inference import fill_mask
    from perceiver_lm.model import PerceiverLM

    model = PerceiverLM.from_pretrained(options.checkpoint)
    result = fill_mask(model, options.text, top_k=max(1, options.top_k), source=options.checkpoint)
    typer.echo(result.text)
    for position, candidates in zip(result.positions, result.candidates, strict=True) if options.top_k else ():
        typer.echo(f"  byte {position}: " + ", ".join(f"{c!r}:{p:.2f}" for c, p in candidates))


@_command(app, "info", InfoOptions)
def _info(options: InfoOptions) -> None:
    """Describe a checkpoint: model shape, parameters, training step and last evaluation."""
    from perceiver_lm.checkpoint import describe

    typer.echo(describe(options.checkpoint))


@_command(app, "convert", ConvertOptions)
def _convert(options: ConvertOptions) -> None:
    """Import a transformers Perceiver MLM checkpoint, or export ours for PerceiverForMaskedLM."""
    from perceiver_lm.interop import convert_from_transformers, export_checkpoint

    if options.from_transformers is not None:
        written = convert_from_transformers(options.from_transformers, options.out, options.overwrite)
        typer.echo(f"wrote perceiver-lm checkpoint {written}")
    else:
        typer.echo(
            f"wrote transformers folder {export_checkpoint(options.to_transformers, options.out, options.overwrite)}"
        )


@_command(app, "plot", PlotOptions)
def _plot(options: PlotOptions) -> None:
    """Plot validation bits per masked byte and accuracy against training time or steps."""
    from perceiver_lm.viz.plotting import plot_curve

    check_output_file(options.out, "--out")
    typer.echo(plot_curve(options.runs, options.out, options.label or None, options.x))


@_command(app, "attention", AttentionOptions)
def _attention(options: AttentionOptions) -> None:
    """Show which input bytes each latent reads: kinds of latents, their bytes, pictures."""
    from perceiver_lm.viz.attention_render import attention_report

    for line in attention_report(options):
        typer.echo(line)


@_command(
    finetune_app,
    "train",
    GlueOptions,
    GlueTrainOptions,
    kind="fine-tuning",
    help="Fine-tune on tasks of your own: a label or score per text, or a tag per word (--task-type "
    "token-classification), from CSV, TSV, JSON Lines, Parquet or CoNLL files (--train-file, --validation-file), a "
    "Hugging Face dataset (--dataset) or a task file of several (--task-file); built-in tasks with --tasks.",
)
@_command(glue_app, "train", GlueOptions, GlueTrainOptions, kind="GLUE")
def _glue_train(options: GlueOptions, train: GlueTrainOptions) -> None:
    """Fine-tune a pretrained checkpoint on one or more GLUE tasks at once (one query and head per task)."""
    from perceiver_lm.runtime import end_processes
    from tasks.finetune.finetune import finetune
    from tasks.finetune.predict import results_table
    from tasks.finetune.sweep import sweep

    try:
        result = sweep(options, *train.grid) if train.sweep else finetune(options)
    finally:
        end_processes()
    if not train.sweep:
        typer.echo(results_table(result.best))
        typer.echo(f"best model: {result.best_model}; dev metrics: {result.output_dir / 'dev_metrics.json'}")
        return
    typer.echo(results_table(result["best"]))
    for name, entry in result["best"].items():
        typer.echo(
            f"{name}: best at batch {entry['batch_size']}, lr {entry['lr']:g}, step {entry['step']} "
            f"({entry['output_dir']})"
        )
    typer.echo(f"wrote {Path(options.output_dir) / 'sweep.json'}")


@_command(
    finetune_app,
    "eval",
    GlueEvalOptions,
    help="Score a fine-tuned model on the validation data of its tasks (optionally with noisy inputs).",
)
@_command(glue_app, "eval", GlueEvalOptions)
def _glue_eval(options: GlueEvalOptions) -> None:
    """Score a fine-tuned model on the dev splits of its tasks (optionally with noisy inputs)."""
    from tasks.finetune.predict import COLUMN_OPTIONS, evaluate_checkpoint, results_table

    check_output_file(options.out, "--out")
    o = options
    scores = evaluate_checkpoint(
        o.checkpoint,
        o.glue_dir,
        o.tasks,
        o.batch_size,
        o.max_eval_examples,
        tuple(o.noise),
        o.noise_seed,
        o.validation_file,
        {name: getattr(o, name) for name in COLUMN_OPTIONS},
    )
    typer.echo(results_table({name: {"scores": s} for name, s in scores.items()}))
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(options.out, scores)
        typer.echo(f"wrote {options.out}")


@_command(
    finetune_app,
    "predict",
    GluePredictOptions,
    help="Predict the test data of a fine-tuned model's tasks: label names or scores (NAME.tsv), tags per word "
    "(NAME.jsonl with spans, NAME.conll), GLUE's submission files.",
)
@_command(glue_app, "predict", GluePredictOptions)
def _glue_predict(options: GluePredictOptions) -> None:
    """Predict the test sets of a fine-tuned model's tasks, in GLUE's submission format."""
    from tasks.finetune.predict import COLUMN_OPTIONS, predict_test

    o = options
    columns = {name: getattr(o, name) for name in COLUMN_OPTIONS if hasattr(o, name)}
    written = predict_test(o.checkpoint, o.glue_dir, o.out, o.batch_size, o.overwrite, o.test_file, columns)
    for path in written:
        typer.echo(f"wrote {path}")


def main() -> None:
    app(prog_name="perceiver-lm")


if __name__ == "__main__":
    main()
