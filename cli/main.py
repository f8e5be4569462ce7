"""The ``perceiver-lm`` command line: parse options, build a config, call one library function."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import tomllib
import typer
from typer.core import TyperGroup

from perceiver_lm.errors import PerceiverLMError, one_line
from perceiver_lm.run_dir import check_output_file, write_json_atomic

DEBUG_VARIABLE = "PERCEIVER_LM_DEBUG"


class OneLineErrors(TyperGroup):
    """Usage errors (an unknown option, ``--batch-size abc``) as one ``error:`` line, exit status 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
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
            typer.echo(f"error: {command}{' '.join(err.format_message().split())}", err=True)
            sys.exit(err.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors, add_completion=False, no_args_is_help=True, help="Byte-level Perceiver IO language models."
)


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
        except Exception as err:
            message = one_line(err)
            if message is None or os.environ.get(DEBUG_VARIABLE) == "1":
                raise
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _read_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except OSError as err:
        raise PerceiverLMError(f"--config {path}: cannot read ({one_line(err).partition(': ')[2]})") from None
    except UnicodeDecodeError as err:
        raise PerceiverLMError(
            f"--config {path}: not UTF-8 text (byte {err.start}); expected a {kind} file of options"
        ) from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise PerceiverLMError(f"--config {path}: not valid {kind} ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise PerceiverLMError(f"--config {path}: expected a {kind} table of options, got {type(data).__name__}")
    return data


def _options(
    options_class: type, config: Path | None, file_options: dict[str, Any], given: dict[str, Any], kind: str
) -> Any:
    """Options from a config file (type-checked, naming the file) overridden by the ones given on the command line."""
    from perceiver_lm.validation import check_fields

    check_fields(options_class, file_options, f"--config {config}", f"{kind} option")
    explicit = {k: v for k, v in given.items() if v is not None and v != []}
    return options_class(**{**file_options, **explicit})


def _option_type(annotation: Any) -> Any:
    """The CLI type of a TrainingOptions field: Optional[...] so an unset option reads as None."""
    if typing.get_origin(annotation) is typing.Literal:
        return Optional[str]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return Optional[args[0]]
    return Optional[annotation]


def _dataclass_parameters(options_class: type) -> list[inspect.Parameter]:
    """One keyword-only CLI option per field of an options dataclass, with the field's help text."""
    hints = typing.get_type_hints(options_class)
    params = []
    for f in dataclasses.fields(options_class):
        annotation = hints[f.name]
        help_text = f.metadata["help"]
        if typing.get_origin(annotation) is typing.Literal:
            help_text += f" (choices: {', '.join(typing.get_args(annotation))})"
        option = typer.Option(f"--{f.name.replace('_', '-')}", help=help_text, show_default=False)
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[_option_type(annotation), option],
            )
        )
    return params


def _pretrain(preset: Optional[str], config: Optional[Path], **given: Any) -> None:
    """Pretrain a byte-level masked LM (defaults: `small` preset on the built-in corpus)."""
    from perceiver_lm.config import PerceiverConfig, get_preset
    from perceiver_lm.options import TrainingOptions
    from perceiver_lm.trainer import end_processes
    from perceiver_lm.training import pretrain

    file_options = _read_config_file(config)
    model_overrides = file_options.pop("model", {})
    file_preset = file_options.pop("preset", None)
    source = f"--config {config}"
    if not isinstance(model_overrides, dict) or not isinstance(file_preset, (str, type(None))):
        raise PerceiverLMError(f"{source}: `model` must be a table of model config fields and `preset` a string")
    options = _options(TrainingOptions, config, file_options, given, "training")
    shaped = preset or file_preset or model_overrides
    if options.init_from and shaped:
        raise PerceiverLMError(
            f"--init-from {options.init_from}: the model's shape is the checkpoint's; leave out --preset and the "
            "config file's `preset`/[model]"
        )
    model_config = (
        None
        if options.init_from
        else PerceiverConfig.from_dict(
            {**get_preset(preset or file_preset or "small").to_dict(), **model_overrides}, source
        )
    )
    try:
        result = pretrain(options, model_config)
    finally:
        end_processes()
    if result.eval_metrics and result.main_process:
        m = result.eval_metrics
        typer.echo(
            f"step {result.step}: validation {m['bits_per_byte']:.3f} bits per masked byte, "
            f"accuracy {m['accuracy']:.3f}; checkpoint {result.checkpoint}"
        )


def _options_command(func, options_class: type, extra: list[tuple[str, Any, Any]]):
    """A typer command calling ``func`` with ``extra`` (name, default, annotation) options and one option per field."""

    def command(**kwargs):
        return user_errors(func)(**kwargs)

    keyword = inspect.Parameter.KEYWORD_ONLY
    command.__signature__ = inspect.Signature(
        [
            inspect.Parameter(name, keyword, default=default, annotation=annotation)
            for name, default, annotation in extra
        ]
        + _dataclass_parameters(options_class)
    )
    command.__doc__ = func.__doc__
    return command


def _build_pretrain_command():
    from perceiver_lm.config import PRESETS
    from perceiver_lm.options import TrainingOptions

    return _options_command(
        _pretrain,
        TrainingOptions,
        [
            (
                "preset",
                None,
                Annotated[Optional[str], typer.Option(help=f"Model preset: {', '.join(PRESETS)} (default: small).")],
            ),
            (
                "config",
                None,
                Annotated[
                    Optional[Path],
                    typer.Option(
                        help="JSON/TOML file of training options, with optional `preset` and a `model` table of config "
                        "overrides; options given here win."
                    ),
                ],
            ),
        ],
    )


app.command("pretrain", help=_pretrain.__doc__)(_build_pretrain_command())


def _evaluate(checkpoint: Path, **given: Any) -> None:
    """Score a pretrained checkpoint on held-out text: bits per masked byte and accuracy, per byte class."""
    from perceiver_lm.evaluation import score_text
    from perceiver_lm.options import EvalOptions

    options = _options(EvalOptions, None, {}, given, "evaluation")
    if options.json not in (None, "-"):
        check_output_file(Path(options.json), "--json", replace=options.overwrite)
    report = score_text(checkpoint, options)
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
        write_json_atomic(Path(options.json), record)
        typer.echo(f"wrote {options.json}")


def _build_evaluate_command():
    from perceiver_lm.options import EvalOptions

    checkpoint = Annotated[Path, typer.Argument(help="Pretrained checkpoint or run directory (its newest checkpoint).")]
    return _options_command(_evaluate, EvalOptions, [("checkpoint", inspect.Parameter.empty, checkpoint)])


app.command("evaluate", help=_evaluate.__doc__)(_build_evaluate_command())


@app.command("fill-mask")
@user_errors
def fill_mask_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint or run directory.")],
    text: Annotated[str, typer.Argument(help="Text with [MASK] (one byte) or [MASK*N] (N bytes) marks.")],
    top_k: Annotated[int, typer.Option(help="Show the k most likely bytes per masked position.")] = 0,
) -> None:
    """Fill the masked bytes of TEXT and print the filled text."""
    from perceiver_lm.inference import fill_mask
    from perceiver_lm.model import PerceiverLM

    if top_k < 0:
        raise PerceiverLMError(f"--top-k must be 0 or more, got {top_k}")
    result = fill_mask(PerceiverLM.from_pretrained(checkpoint), text, top_k=max(1, top_k))
    typer.echo(result.text)
    if top_k:
        for position, candidates in zip(result.positions, result.candidates, strict=True):
            shown = ", ".join(f"{c!r}:{p:.2f}" for c, p in candidates)
            typer.echo(f"  byte {position}: {shown}")


@app.command("info")
@user_errors
def info_command(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint or run directory.")]) -> None:
    """Describe a checkpoint: model shape, parameters, training step and last evaluation."""
    from perceiver_lm.checkpoint import describe

    typer.echo(describe(checkpoint))


@app.command("convert")
@user_errors
def convert_command(
    out: Annotated[Path, typer.Argument(help="Folder to write.")],
    from_transformers: Annotated[
        Optional[str], typer.Option(help="transformers PerceiverForMaskedLM folder or Hub id to import.")
    ] = None,
    to_transformers: Annotated[
        Optional[Path], typer.Option(help="perceiver-lm checkpoint or run directory to export.")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace an earlier conversion in OUT (a folder holding anything else is never replaced)."),
    ] = False,
) -> None:
    """Import a transformers Perceiver MLM checkpoint, or export ours for PerceiverForMaskedLM."""
    from perceiver_lm.interop import convert_from_transformers, export_checkpoint

    if (from_transformers is None) == (to_transformers is None):
        raise PerceiverLMError("give exactly one of --from-transformers SOURCE or --to-transformers CHECKPOINT")
    if from_transformers is not None:
        typer.echo(f"wrote perceiver-lm checkpoint {convert_from_transformers(from_transformers, out, overwrite)}")
    else:
        typer.echo(f"wrote transformers folder {export_checkpoint(to_transformers, out, overwrite)}")


@app.command("plot")
@user_errors
def plot_command(
    runs: Annotated[list[Path], typer.Argument(help="One or more pretraining run directories.")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("curve.png"),
    label: Annotated[
        Optional[list[str]], typer.Option(help="Legend label per run (default: the folder names).")
    ] = None,
    x: Annotated[str, typer.Option(help="x axis: minutes (speed) or steps (learning per step).")] = "minutes",
) -> None:
    """Plot validation bits per masked byte and accuracy against training time or steps."""
    from perceiver_lm.viz.plotting import plot_curve

    if label and len(label) != len(runs):
        raise PerceiverLMError(f"--label given {len(label)} times for {len(runs)} run(s)")
    check_output_file(out, "--out")
    typer.echo(plot_curve(runs, out, label, x))


@app.command("attention")
@user_errors
def attention_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint or run directory (masked LM or GLUE-fine-tuned).")],
    text: Annotated[Optional[str], typer.Argument(help="Text to read (or use --file).")] = None,
    file: Annotated[Optional[Path], typer.Option(help="Read the text from this UTF-8 file instead.")] = None,
    head: Annotated[
        Optional[int], typer.Option(help="Summarise one head (default: every head; -1: the mean of the heads).")
    ] = None,
    top: Annotated[int, typer.Option(help="Latents to print per kind.")] = 3,
    query: Annotated[
        Optional[str],
        typer.Option(help="Decoder query to show: a byte position (masked LM) or a task name (fine-tuned model)."),
    ] = None,
    png: Annotated[Optional[Path], typer.Option(help="Write a heatmap + example latents PNG here.")] = None,
    span: Annotated[
        Optional[str],
        typer.Option(help="Bytes FIRST:END the PNG heatmap zooms to (default: all of a short text, else 0:192)."),
    ] = None,
    html: Annotated[Optional[Path], typer.Option(help="Write a self-contained interactive HTML page here.")] = None,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="Write the per-latent summaries as JSON here.")
    ] = None,
) -> None:
    """Show which input bytes each latent reads: kinds of latents, their bytes, pictures."""
    import dataclasses as dc
    from collections import Counter

    from perceiver_lm.model import load_any
    from perceiver_lm.viz.attention_maps import KINDS, attention_maps, describe_summary, summarize
    from perceiver_lm.viz.attention_render import examples_by_kind, render_html, render_png

    if (text is None) == (file is None):
        raise PerceiverLMError("give the text as an argument or with --file, not both")
    if top < 0:
        raise PerceiverLMError(f"--top must be 0 or more, got {top}")
    for path, option in ((png, "--png"), (html, "--html"), (json_out, "--json")):
        check_output_file(path, option)
    if file is not None:
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise PerceiverLMError(f"--file {file}: not valid UTF-8 at byte {err.start}") from None
    model = load_any(checkpoint)
    chosen = int(query) if query is not None and query.lstrip("-").isdigit() else query
    maps = attention_maps(model, [text], query=chosen)[0]
    summaries = summarize(maps, head)
    counts = Counter(s.kind for s in summaries)
    rows = "mean of heads" if head == -1 else ("every head" if head is None else f"head {head}")
    prefer = Counter(s.prefers for s in summaries if s.prefers)
    typer.echo(
        f"{len(maps.ids)} input positions, {maps.encoder.shape[1]} latents x {maps.encoder.shape[0]} heads ({rows}): "
        + ", ".join(f"{counts.get(k, 0)} {k}" for k in KINDS)
        + ("; preferring a byte class: " + ", ".join(f"{n} {c}" for c, n in prefer.most_common()) if prefer else "")
    )
    labels = maps.labels()
    for kind, group in examples_by_kind(summaries, top).items():
        if group:
            typer.echo(f"\n{kind}:")
            for summary in group:
                typer.echo("  " + describe_summary(summary, labels))
    if maps.decoder is not None:
        order = maps.decoder.mean(0).argsort()[::-1][:8]
        typer.echo(
            f"\ndecoder query {maps.query} reads latents: "
            + ", ".join(f"{n}:{maps.decoder.mean(0)[n]:.2f}" for n in order)
        )
    if png:
        try:
            zoom = tuple(int(x) for x in span.split(":")) if span else None
        except ValueError:
            raise PerceiverLMError(f"--span {span!r}: expected FIRST:END byte positions, e.g. 0:160") from None
        if zoom is not None and len(zoom) != 2:
            raise PerceiverLMError(f"--span {span!r}: expected FIRST:END byte positions, e.g. 0:160")
        typer.echo(f"wrote {render_png(maps, png, -1 if head is None else head, span=zoom)}")
    if html:
        typer.echo(f"wrote {render_html(maps, html, title=f'Latent attention: {checkpoint}')}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_out, {"text": text, "summaries": [dc.asdict(s) for s in summaries]})
        typer.echo(f"wrote {json_out}")


glue_app = typer.Typer(
    no_args_is_help=True, help="Fine-tune, evaluate and predict on GLUE with the multi-task query decoder."
)
app.add_typer(glue_app, name="glue")


def _glue_train(config: Optional[Path], sweep: bool, sweep_batch_sizes: str, sweep_lrs: str, **given: Any) -> None:
    """Fine-tune a pretrained checkpoint on one or more GLUE tasks at once (one query and head per task)."""
    from perceiver_lm.trainer import end_processes
    from tasks.glue.finetune import finetune, results_table
    from tasks.glue.finetune import sweep as run_sweep
    from tasks.glue.options import GlueOptions

    options = _options(GlueOptions, config, _read_config_file(config), given, "GLUE")
    if sweep:
        try:
            batch_sizes = [int(b) for b in sweep_batch_sizes.split(",")]
            lrs = [float(x) for x in sweep_lrs.split(",")]
        except ValueError:
            raise PerceiverLMError(
                f"--sweep-batch-sizes/--sweep-lrs: expected comma-separated numbers, got {sweep_batch_sizes!r} / "
                f"{sweep_lrs!r}"
            ) from None
        try:
            summary = run_sweep(options, batch_sizes, lrs)
        finally:
            end_processes()
        typer.echo(results_table(summary["best"]))
        for name, entry in summary["best"].items():
            typer.echo(
                f"{name}: best at batch {entry['batch_size']}, lr {entry['lr']:g}, step {entry['step']} "
                f"({entry['output_dir']})"
            )
        typer.echo(f"wrote {Path(options.output_dir) / 'sweep.json'}")
        return
    try:
        result = finetune(options)
    finally:
        end_processes()
    typer.echo(results_table(result.best))
    typer.echo(f"best model: {result.best_model}; dev metrics: {result.output_dir / 'dev_metrics.json'}")


def _build_glue_train_command():
    from tasks.glue.options import GlueOptions

    return _options_command(
        _glue_train,
        GlueOptions,
        [
            (
                "config",
                None,
                Annotated[
                    Optional[Path], typer.Option(help="JSON/TOML file of these options; options given here win.")
                ],
            ),
            (
                "sweep",
                False,
                Annotated[
                    bool,
                    typer.Option(
                        help="Fine-tune once per grid point (--sweep-batch-sizes x --sweep-lrs), keep the best dev "
                        "score per task."
                    ),
                ],
            ),
            (
                "sweep_batch_sizes",
                "16,32,64",
                Annotated[str, typer.Option(help="Batch sizes of the sweep grid (paper: 16,32,64).")],
            ),
            (
                "sweep_lrs",
                "1e-4,5e-5,2e-5,1e-5",
                Annotated[str, typer.Option(help="Learning rates of the sweep grid (paper: 1e-4,5e-5,2e-5,1e-5).")],
            ),
        ],
    )


glue_app.command("train", help=_glue_train.__doc__)(_build_glue_train_command())


@glue_app.command("eval")
@user_errors
def glue_eval_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="Fine-tuned model (a run's best/ folder, or any checkpoint with tasks.json).")
    ],
    glue_dir: Annotated[
        Optional[str], typer.Option(help="GLUE directory in the original layout; default: the Hub.")
    ] = None,
    tasks: Annotated[
        Optional[str], typer.Option(help="Subset of the model's tasks to evaluate (default: all of them).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the dev metrics as JSON here.")] = None,
    max_eval_examples: Annotated[
        Optional[int], typer.Option(help="Evaluate on at most this many examples per split.")
    ] = None,
    noise: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Corrupt the dev texts first: KIND:RATE, repeatable, applied together in order (drop, add, mutate, "
            "repeat, uppercase, random_case, antspeak; e.g. drop:0.1)."
        ),
    ] = None,
    noise_seed: Annotated[int, typer.Option(help="Seed of --noise: the same seed corrupts the same way.")] = 0,
) -> None:
    """Score a fine-tuned model on the dev splits of its tasks (optionally with noisy inputs)."""
    from tasks.glue.finetune import evaluate_checkpoint, results_table

    check_output_file(out, "--out")
    scores = evaluate_checkpoint(
        checkpoint, glue_dir, tasks, max_eval_examples=max_eval_examples, noise=noise or (), noise_seed=noise_seed
    )
    typer.echo(results_table({name: {"scores": s} for name, s in scores.items()}))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, scores)
        typer.echo(f"wrote {out}")


@glue_app.command("predict")
@user_errors
def glue_predict_command(
    checkpoint: Annotated[Path, typer.Argument(help="Fine-tuned model (a run's best/ folder).")],
    out: Annotated[Path, typer.Option(help="Folder for the submission files (SST-2.tsv, MNLI-m.tsv, ...).")] = Path(
        "glue_predictions"
    ),
    glue_dir: Annotated[
        Optional[str], typer.Option(help="GLUE directory in the original layout; default: the Hub.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace submission files already in --out.")] = False,
) -> None:
    """Predict the test sets of a fine-tuned model's tasks, in GLUE's submission format."""
    from tasks.glue.finetune import predict_test

    for path in predict_test(checkpoint, glue_dir, out, overwrite=overwrite):
        typer.echo(f"wrote {path}")


def main() -> None:
    app(prog_name="perceiver-lm")


if __name__ == "__main__":
    main()
