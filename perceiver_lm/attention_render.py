"""Pictures of attention maps: a PNG (heatmap + example latents) and a self-contained HTML page.

The page embeds its data as JSON (with ``<``, ``>`` and ``&`` escaped, so no input text can close
the script element) and writes every piece of the text with ``textContent``, never as markup. It
needs no network: no external scripts, styles or fonts.
"""

from __future__ import annotations

import base64
import html
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from perceiver_lm.attention_maps import KINDS, AttentionMaps, LatentSummary, describe_summary, summarize
from perceiver_lm.errors import PerceiverLMError

SPAN_MASS = 0.3
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
    labels = maps.labels()
    full = _head_map(maps, head)  # [N, L]
    examples = [s for group in examples_by_kind(summaries, per_kind).values() for s in group]
    length = full.shape[1]
    first, end = span if span is not None else ((0, length) if length <= 256 else (0, 192))
    if not 0 <= first < end <= length:
        raise PerceiverLMError(f"--span {first}:{end}: outside the text's 0:{length} bytes")
    rows = (
        np.flatnonzero(full[:, first:end].sum(1) >= SPAN_MASS)
        if (first, end) != (0, length)
        else np.arange(full.shape[0])
    )
    if len(rows) == 0:
        rows = np.argsort(-full[:, first:end].sum(1))[:8]
    grid = full[rows, first:end]
    all_labels, labels = labels, labels[first:end]
    width_bytes = end - first
    width = min(28.0, max(10.0, width_bytes * 0.12))
    fig = Figure(figsize=(width, 6 + 1.1 * len(examples)))
    grid_spec = fig.add_gridspec(1 + len(examples), 1, height_ratios=[6] + [1.1] * len(examples), hspace=0.5)
    ax = fig.add_subplot(grid_spec[0])
    shown = ax.imshow(
        grid / np.maximum(grid.max(1, keepdims=True), 1e-12), aspect="auto", cmap="magma", interpolation="nearest"
    )
    fig.colorbar(shown, ax=ax, fraction=0.02, pad=0.01, label="weight / row max")
    step = max(1, int(np.ceil(width_bytes / 200)))
    ax.set_xticks(range(0, width_bytes, step))
    ax.set_xticklabels(labels[::step], fontsize=7, family="monospace", rotation=0 if step == 1 else 90)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([str(r) for r in rows], fontsize=6 if len(rows) > 40 else 8)
    ax.set_ylabel("latent")
    ax.set_xlabel(
        f"bytes {first}..{end - 1}"
        + (
            ""
            if (first, end) == (0, length)
            else f" of {length} (latents with >= {SPAN_MASS:.0%} of their weight here)"
        ),
        fontsize=8,
    )
    counts = Counter(s.kind for s in summaries)
    head_name = "mean over heads" if head == -1 else f"head {head}"
    ax.set_title(
        f"Encoder cross-attention, {head_name}: latents (rows) over input bytes (columns)\n"
        + ", ".join(f"{counts.get(k, 0)} {k}" for k in KINDS),
        fontsize=10,
    )
    for row, summary in enumerate(examples, start=1):
        axis = fig.add_subplot(grid_spec[row])
        weights = full[summary.latent]
        # Local latents are drawn over their own neighbourhood, with the text; the others over all of it.
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
            axis.set_xticklabels(all_labels[lo:hi], fontsize=7, family="monospace")
        note = f" period {summary.period:.1f}" if summary.kind == "periodic" else ""
        note += f", prefers {summary.prefers}" if summary.prefers else ""
        axis.set_title(
            f"latent {summary.latent}: {summary.kind}{note} (centre {summary.centre:.0f}, spread {summary.spread:.1f})",
            fontsize=8,
            loc="left",
            color=KIND_COLOURS[summary.kind],
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # emoji: drawn as boxes
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


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
    segments = [{"t": t, "a": a, "b": b, "special": bool(maps.ids[a] < 6)} for t, a, b in maps.segments()]
    data = {
        "segments": segments,
        "length": length,
        "latents": latents,
        "views": views,
        "kinds": list(KINDS),
        "colours": KIND_COLOURS,
        "query": maps.query,
        "decoder": None if maps.decoder is None else np.round(maps.decoder.mean(0), 5).tolist(),
    }
    page = _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", _safe_json(data))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>__TITLE__</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 16px 22px; color: #222; }
h1 { font-size: 18px; margin: 0 0 8px; }
#controls { display: flex; gap: 16px; align-items: center; flex-wrap: wrap; margin-bottom: 8px; }
#main { display: grid; grid-template-columns: minmax(260px, 330px) 1fr; gap: 18px; }
#latents { max-height: 74vh; overflow-y: auto; border: 1px solid #ddd; padding: 6px; }
.latent { display: inline-block; min-width: 40px; margin: 2px; padding: 2px 4px; border-radius: 4px; border: 2px solid transparent;
  font: 12px monospace; cursor: pointer; color: #fff; text-align: center; }
.latent.selected { border-color: #000; box-shadow: 0 0 0 2px #ffd400; }
#text { font: 16px/2.0 ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; border: 1px solid #ddd; padding: 10px; }
#text span.seg { border-radius: 2px; }
#text span.special { font-size: 11px; color: #666; border: 1px dotted #999; margin: 0 2px; }
#overview { width: 100%; height: 180px; image-rendering: pixelated; border: 1px solid #ddd; cursor: crosshair; }
#info { font: 12px/1.5 monospace; white-space: pre-wrap; background: #f6f6f6; padding: 8px; min-height: 3em; }
.legend span { display: inline-block; padding: 0 6px; margin-right: 6px; border-radius: 3px; color: #fff; font-size: 12px; }
</style></head>
<body>
<h1>__TITLE__</h1>
<div id="controls">
  <label>Head <select id="head"></select></label>
  <label>Show <select id="filter"><option value="">all latents</option></select></label>
  <span class="legend" id="legend"></span>
  <span id="query"></span>
</div>
<div id="main">
  <div><div id="latents"></div></div>
  <div>
    <canvas id="overview" title="latents (rows) over bytes (columns); click a row to select that latent"></canvas>
    <div id="info">Hover or click a latent to see which bytes it reads.</div>
    <div id="text"></div>
  </div>
</div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const state = { view: 0, latent: null, pinned: null };
const levels = data.views.map(v => Uint8Array.from(atob(v.levels), c => c.charCodeAt(0)));
const headSelect = document.getElementById("head"), filter = document.getElementById("filter");
data.views.forEach((v, i) => headSelect.add(new Option(v.name, String(i))));
data.kinds.forEach(k => filter.add(new Option(k, k)));
const classes = ["whitespace", "punctuation", "capitals", "digits", "non-ascii"];
const marks = { "whitespace": "␣", "punctuation": ".", "capitals": "A", "digits": "9", "non-ascii": "é" };
classes.forEach(c => filter.add(new Option("prefers " + c, "prefers:" + c)));
const legend = document.getElementById("legend");
data.kinds.forEach(k => { const s = document.createElement("span"); s.textContent = k; s.style.background = data.colours[k]; legend.appendChild(s); });
if (data.query) document.getElementById("query").textContent = "decoder query: " + data.query;

const textBox = document.getElementById("text");
const spans = data.segments.map(seg => {
  const span = document.createElement("span");
  span.className = seg.special ? "seg special" : "seg";
  span.textContent = seg.t === "\\n" ? "\\u23ce\\n" : seg.t;
  span.dataset.start = seg.a; span.dataset.end = seg.b;
  textBox.appendChild(span);
  return span;
});

function weights(view, latent) {
  const row = levels[view].subarray(latent * data.length, (latent + 1) * data.length);
  const top = data.views[view].tops[latent];
  return Array.from(row, v => v / 255 * top);
}

function renderLatents() {
  const box = document.getElementById("latents");
  box.textContent = "";
  data.views[state.view].latents.forEach((info, n) => {
    if (filter.value.startsWith("prefers:") ? info.prefers !== filter.value.slice(8) : (filter.value && info.kind !== filter.value)) return;
    const b = document.createElement("span");
    b.className = "latent" + (state.latent === n ? " selected" : "");
    b.textContent = String(n) + (info.prefers ? " " + marks[info.prefers] : "");
    b.dataset.latent = n;
    b.title = info.kind + (info.prefers ? ", prefers " + info.prefers : "");
    b.style.background = data.colours[info.kind];
    b.addEventListener("mouseenter", () => { if (state.pinned === null) select(n, false); });
    b.addEventListener("click", () => select(n, true));
    box.appendChild(b);
  });
}

function renderOverview() {
  const canvas = document.getElementById("overview");
  canvas.width = data.length; canvas.height = data.latents;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(data.length, data.latents);
  const lv = levels[state.view];
  for (let i = 0; i < lv.length; i++) {
    const v = lv[i], latent = Math.floor(i / data.length), mark = latent === state.latent;
    image.data[4 * i] = mark ? 255 : 255 - v; image.data[4 * i + 1] = mark ? 212 - v * 0.6 : 255 - v * 0.75;
    image.data[4 * i + 2] = mark ? 0 : 255 - v * 0.35; image.data[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

function select(latent, pin) {
  state.latent = latent;
  if (pin) state.pinned = latent;
  const w = weights(state.view, latent);
  const perSegment = spans.map(s => { let t = 0; for (let p = +s.dataset.start; p < +s.dataset.end; p++) t += w[p]; return t; });
  const peak = Math.max(...perSegment, 1e-12);
  spans.forEach((s, i) => {
    const a = perSegment[i] / peak;
    s.style.background = a > 0.02 ? `rgba(255, 90, 0, ${a.toFixed(3)})` : "";
    s.dataset.weight = perSegment[i].toFixed(5);
    const bytes = [];
    for (let p = +s.dataset.start; p < +s.dataset.end; p++) bytes.push(`byte ${p}: ${w[p].toFixed(4)}`);
    s.title = bytes.join("\\n");
  });
  const info = data.views[state.view].latents[latent];
  document.getElementById("info").textContent = info.line;
  document.querySelectorAll(".latent").forEach(b => b.classList.toggle("selected", +b.dataset.latent === latent));
  renderOverview();
  if (pin) history.replaceState(null, "", `#head=${state.view}&latent=${latent}`);
}

headSelect.addEventListener("change", () => { state.view = +headSelect.value; renderLatents(); if (state.latent !== null) select(state.latent, state.pinned !== null); else renderOverview(); });
filter.addEventListener("change", renderLatents);
document.getElementById("overview").addEventListener("click", ev => {
  const rect = ev.target.getBoundingClientRect();
  select(Math.min(data.latents - 1, Math.floor((ev.clientY - rect.top) / rect.height * data.latents)), true);
});
const hash = new URLSearchParams(location.hash.slice(1));
state.view = Math.min(data.views.length - 1, Math.max(0, parseInt(hash.get("head") || "0", 10) || 0));
headSelect.value = String(state.view);
renderLatents();
renderOverview();
if (hash.has("latent")) select(Math.min(data.latents - 1, Math.max(0, parseInt(hash.get("latent"), 10) || 0)), true);
</script>
</body></html>
"""  # noqa: E501 -- the page's inline CSS/JS: its lines are page content, not Python code
