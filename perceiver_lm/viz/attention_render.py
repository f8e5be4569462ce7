"""Pictures of attention maps: a PNG (heatmap + example latents) and a self-contained HTML page.

The page embeds its data as JSON (with ``<``, ``>`` and ``&`` escaped, so no input text can close
the script element) and writes every piece of the text with ``textContent``, never as markup. It
needs no network: no external scripts, styles or fonts.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import warnings
from collections import Counter
from importlib.resources import files
from pathlib import Path

import numpy as np

from perceiver_lm.config import SIZE_LIMITS
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.options import AttentionOptions
from perceiver_lm.run_dir import check_output_file, write_json_atomic
from perceiver_lm.tokenizer import NUM_SPECIAL
from perceiver_lm.user_files import check_regular_file, read_prefix
from perceiver_lm.viz.attention_maps import (
    BYTE_CLASSES,
    KINDS,
    AttentionMaps,
    LatentSummary,
    attention_maps,
    describe_summary,
    summarize,
)

SPAN_MASS = 0.3
UTF8_CHECK_BYTES = 1 << 20  # of a --file longer than the window, read to tell a binary file from a long text
KIND_COLOURS = {
    "local": "#1f77b4",
    "class-selective": "#d62728",
    "periodic": "#2ca02c",
    "diffuse": "#7f7f7f",
    "mixed": "#9467bd",
}


def _head_map(maps: AttentionMaps, head: int) -> np.ndarray:
    return maps.encoder.mean(0) if head == -1 else maps.encoder[head]


def examples_by_kind(summaries: list[LatentSummary], per_kind: int) -> dict[str, list[LatentSummary]]:
    """The clearest examples of each kind: sharpest local, strongest periodic/selective, flattest diffuse."""
    keys = {
        "local": lambda s: s.spread,
        "class-selective": lambda s: -max((m for m in s.class_mass.values()), default=0.0),
        "periodic": lambda s: -s.period_power,
        "diffuse": lambda s: -s.normalized_entropy,
        "mixed": lambda s: -s.normalized_entropy,
    }
    return {kind: sorted((s for s in summaries if s.kind == kind), key=keys[kind])[:per_kind] for kind in KINDS}


def render_png(
    maps: AttentionMaps, path: str | Path, head: int = -1, per_kind: int = 2, span: tuple[int, int] | None = None
) -> Path:
    """Heatmap of latents x bytes for one head (-1: mean over heads), with the text along the axis,
    above a panel of example latents of each kind.

    ``span`` (first, end) zooms the heatmap to those bytes and the latents that put at least
    SPAN_MASS of their weight there; by default texts longer than 256 bytes show their first 192.
    """
    # The object API draws without pyplot, so a notebook's backend is left alone.
    from matplotlib.figure import Figure

    summaries = summarize(maps, head)
    full = _head_map(maps, head)  # [N, L]
    examples = [s for group in examples_by_kind(summaries, per_kind).values() for s in group]
    length = full.shape[1]
    first, end = span if span is not None else ((0, length) if length <= 256 else (0, 192))
    if not 0 <= first < end <= length:
        raise PerceiverLMError(f"--span {first}:{end}: outside the text's 0:{length} bytes")
    fig = Figure(figsize=(min(28.0, max(10.0, (end - first) * 0.12)), 6 + 1.1 * len(examples)))
    grid_spec = fig.add_gridspec(1 + len(examples), 1, height_ratios=[6] + [1.1] * len(examples), hspace=0.5)
    ax = fig.add_subplot(grid_spec[0])
    _draw_heatmap(fig, ax, full, maps.labels(), first, end)
    counts = Counter(s.kind for s in summaries)
    head_name = "mean over heads" if head == -1 else f"head {head}"
    ax.set_title(
        f"Encoder cross-attention, {head_name}: latents (rows) over input bytes (columns)\n"
        + ", ".join(f"{counts.get(k, 0)} {k}" for k in KINDS),
        fontsize=10,
    )
    for row, summary in enumerate(examples, start=1):
        _draw_latent(fig.add_subplot(grid_spec[row]), full[summary.latent], maps.labels(), summary)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # emoji: drawn as boxes
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _draw_heatmap(fig, ax, full: np.ndarray, labels: list[str], first: int, end: int) -> None:
    """Latents x bytes ``first:end``; a zoomed view shows only the latents that look there."""
    length = full.shape[1]
    whole = (first, end) == (0, length)
    rows = np.arange(full.shape[0]) if whole else np.flatnonzero(full[:, first:end].sum(1) >= SPAN_MASS)
    if len(rows) == 0:
        rows = np.argsort(-full[:, first:end].sum(1))[:8]
    grid = full[rows, first:end]
    shown = ax.imshow(
        grid / np.maximum(grid.max(1, keepdims=True), 1e-12), aspect="auto", cmap="magma", interpolation="nearest"
    )
    fig.colorbar(shown, ax=ax, fraction=0.02, pad=0.01, label="weight / row max")
    width_bytes = end - first
    step = max(1, int(np.ceil(width_bytes / 200)))
    ax.set_xticks(range(0, width_bytes, step))
    ax.set_xticklabels(labels[first:end][::step], fontsize=7, family="monospace", rotation=0 if step == 1 else 90)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([str(r) for r in rows], fontsize=6 if len(rows) > 40 else 8)
    ax.set_ylabel("latent")
    zoom = "" if whole else f" of {length} (latents with >= {SPAN_MASS:.0%} of their weight here)"
    ax.set_xlabel(f"bytes {first}..{end - 1}{zoom}", fontsize=8)


def _draw_latent(axis, weights: np.ndarray, labels: list[str], summary) -> None:
    """One latent's weights: a local latent over its own neighbourhood, with the text; the others over all of it."""
    length = len(weights)
    reach = int(max(24, 3 * summary.spread))
    lo, hi = (
        (max(0, int(summary.centre) - reach), min(length, int(summary.centre) + reach + 1))
        if summary.kind == "local"
        else (0, length)
    )
    axis.bar(range(lo, hi), weights[lo:hi], width=1.0, color=KIND_COLOURS[summary.kind])
    axis.set_xlim(lo - 0.5, hi - 0.5)
    axis.tick_params(labelsize=7)
    if hi - lo <= 120:
        axis.set_xticks(range(lo, hi))
        axis.set_xticklabels(labels[lo:hi], fontsize=7, family="monospace")
    note = f" period {summary.period:.1f}" if summary.kind == "periodic" else ""
    note += f", prefers {summary.prefers}" if summary.prefers else ""
    axis.set_title(
        f"latent {summary.latent}: {summary.kind}{note} (centre {summary.centre:.0f}, spread {summary.spread:.1f})",
        fontsize=8,
        loc="left",
        color=KIND_COLOURS[summary.kind],
    )


def _quantised(grid: np.ndarray) -> tuple[str, list[float]]:
    """Rows scaled to their max and stored as base64 uint8 (keeps the page small at 2048 bytes)."""
    top = np.maximum(grid.max(1), 1e-12)
    levels = np.round(grid / top[:, None] * 255).astype(np.uint8)
    return base64.b64encode(levels.tobytes()).decode("ascii"), [float(t) for t in top]


def _safe_json(data) -> str:
    text = json.dumps(data, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(maps: AttentionMaps, path: str | Path, title: str = "Perceiver latent attention") -> Path:
    """A self-contained page: pick a head and hover or click a latent to see the bytes it reads."""
    heads, latents, length = maps.encoder.shape
    labels = maps.labels()
    views = []
    for head in [*range(heads), -1]:
        levels, tops = _quantised(_head_map(maps, head))
        summaries = summarize(maps, head)
        views.append(
            {
                "name": "mean of heads" if head == -1 else f"head {head}",
                "levels": levels,
                "tops": tops,
                "latents": [
                    {
                        "kind": s.kind,
                        "prefers": s.prefers,
                        "centre": round(s.centre, 1),
                        "spread": round(s.spread, 1),
                        "entropy": round(s.normalized_entropy, 3),
                        "period": None if s.period is None else round(s.period, 1),
                        "line": describe_summary(s, labels),
                    }
                    for s in summaries
                ],
            }
        )
    segments = [{"t": t, "a": a, "b": b, "special": bool(maps.ids[a] < NUM_SPECIAL)} for t, a, b in maps.segments()]
    data = {
        "segments": segments,
        "length": length,
        "latents": latents,
        "views": views,
        "kinds": list(KINDS),
        "classes": list(BYTE_CLASSES),  # the page reads the class names from here, not its own copy
        "colours": KIND_COLOURS,
        "query": maps.query,
        "decoder": None if maps.decoder is None else np.round(maps.decoder.mean(0), 5).tolist(),
    }
    page = _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", _safe_json(data))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def summary_lines(maps: AttentionMaps, summaries: list[LatentSummary], head: int | None, top: int) -> list[str]:
    """The printed report of ``perceiver-lm attention``: counts of each kind of latent, the ``top``
    clearest latents of each kind with the bytes they read, and what the decoder query reads."""
    counts = Counter(s.kind for s in summaries)
    rows = "mean of heads" if head == -1 else ("every head" if head is None else f"head {head}")
    prefer = Counter(s.prefers for s in summaries if s.prefers)
    lines = [
        f"{len(maps.ids)} input positions, {maps.encoder.shape[1]} latents x {maps.encoder.shape[0]} heads ({rows}): "
        + ", ".join(f"{counts.get(k, 0)} {k}" for k in KINDS)
        + ("; preferring a byte class: " + ", ".join(f"{n} {c}" for c, n in prefer.most_common()) if prefer else "")
    ]
    labels = maps.labels()
    for kind, group in examples_by_kind(summaries, top).items():
        if group:
            lines += [f"\n{kind}:", *("  " + describe_summary(s, labels) for s in group)]
    if maps.decoder is not None:
        reads = maps.decoder.mean(0)
        order = reads.argsort()[::-1][:8]
        lines.append(f"\ndecoder query {maps.query} reads latents: " + ", ".join(f"{n}:{reads[n]:.2f}" for n in order))
    return lines


def read_text(options: AttentionOptions, window: int | None = None) -> str:
    """The text to read: the argument, or the ``--file``'s UTF-8 contents: a regular file of at most ``window``
    bytes (the model's; None: the largest window a model may have), of which no more than that is read."""
    if options.file is None:
        return options.text
    label = f"--file {options.file}"
    window = SIZE_LIMITS["max_seq_len"] if window is None else window
    # A bounded prefix (at least 1 MiB), so that a long binary file is called what it is, not only too long.
    read = max(window, UTF8_CHECK_BYTES)
    data = read_prefix(options.file, read + 1, label, "text file")
    longer = len(data) > window
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if not (len(data) > read and err.reason == "unexpected end of data"):  # not just a character cut off
            raise PerceiverLMError(f"{label}: not valid UTF-8 at byte {err.start}") from None
    if longer:
        raise PerceiverLMError(f"{label}: more than {window:,} bytes, longer than the model's window; shorten it")
    return text


def attention_report(options: AttentionOptions) -> list[str]:
    """``perceiver-lm attention``: load the checkpoint, map its attention over the text, write the
    ``--png``/``--html``/``--json`` files asked for, and return the lines to print (`summary_lines`,
    then one ``wrote PATH`` per file). Output paths are checked before any work."""
    from perceiver_lm.model import load_any

    for path, option in ((options.png, "--png"), (options.html, "--html"), (options.json, "--json")):
        check_output_file(path, option)
    if options.file is not None:
        check_regular_file(options.file, f"--file {options.file}", "text file")  # before the model is loaded
    model = load_any(options.checkpoint)
    text = read_text(options, model.config.max_seq_len)
    maps = attention_maps(model, [text], query=options.decoder_query, source=options.checkpoint)[0]
    summaries = summarize(maps, options.head)
    lines = summary_lines(maps, summaries, options.head, options.top)
    if options.png:
        head = -1 if options.head is None else options.head
        lines.append(f"wrote {render_png(maps, options.png, head, span=options.zoom)}")
    if options.html:
        lines.append(f"wrote {render_html(maps, options.html, title=f'Latent attention: {options.checkpoint}')}")
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(options.json, {"text": text, "summaries": [dataclasses.asdict(s) for s in summaries]})
        lines.append(f"wrote {options.json}")
    return lines


# The page template (inline CSS and JS, no network): __TITLE__ and __DATA__ are filled in per render.
_PAGE = (files("perceiver_lm.viz") / "attention_page.html").read_text(encoding="utf-8")
