"""Model configuration: one frozen dataclass and a dict of named presets."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.tokenizer import VOCAB_SIZE
from perceiver_lm.validation import check_fields, check_instance, matches, read_json, shown

# Upper bounds that keep a config from a file from asking for absurd allocations or module counts;
# the base preset is far inside every one of them.
DEFAULT_SIZE_LIMIT = 1 << 16
SIZE_LIMITS = {
    "max_seq_len": 1 << 20,
    "num_self_layers": 1024,
    "ngram_buckets": 1 << 24,
    "vocab_size": 1 << 20,
    "byte_encoder_layers": 64,
    "byte_encoder_kernel": 1023,
    "cross_widening": 64,
    "self_widening": 64,
}
MAX_PARAMETERS = 4_000_000_000
NGRAM_SIZES = (3, 4, 5, 6, 7, 8)


@dataclass(frozen=True)
class ByteEncoderPart:
    """One independent part of the byte encoder (`PerceiverConfig.byte_encoder`).

    Its module lives in ``perceiver_lm.model.BYTE_ENCODER_MODULES`` under the same name.
    """

    description: str
    max_parameters: Callable[[PerceiverConfig], int]
    """An upper bound on the part's parameters, for `PerceiverConfig.parameter_bound` (not the count)."""
    problem: Callable[[PerceiverConfig], str | None] = lambda config: None
    """What is wrong with a config that uses this part (one line), or None."""


# The byte encoder's parts, in the order they act on the embeddings (the n-grams are added, then the
# convolutions read the sum) and are built (which fixes the weights a seed gives). A ``byte_encoder`` value
# names its parts in this order joined by "_" (``ngram_conv``: both; so no name holds "_"), or is ``none``.
# A new part is one entry here and its module in ``perceiver_lm.model.BYTE_ENCODER_MODULES``.
BYTE_ENCODER_PARTS: dict[str, ByteEncoderPart] = {
    "ngram": ByteEncoderPart(
        f"hashed n-gram embeddings, n = {NGRAM_SIZES[0]}..{NGRAM_SIZES[-1]}, added to the byte embeddings",
        max_parameters=lambda c: c.ngram_buckets * c.d_model,
    ),
    "conv": ByteEncoderPart(
        "residual 1-D convolutions over the embeddings",
        max_parameters=lambda c: c.byte_encoder_layers * c.d_model * (c.byte_encoder_kernel * c.d_model + 3),
        problem=lambda c: (
            None if c.byte_encoder_kernel % 2 else f"byte_encoder_kernel must be odd, got {c.byte_encoder_kernel}"
        ),
    ),
}
# Every value `byte_encoder` accepts: none, then each combination of parts in table order.
BYTE_ENCODERS: tuple[str, ...] = ("none",) + tuple(
    "_".join(parts)
    for size in range(1, len(BYTE_ENCODER_PARTS) + 1)
    for parts in itertools.combinations(BYTE_ENCODER_PARTS, size)
)


def parse_byte_encoder(value: str) -> tuple[str, ...]:
    """The parts a ``byte_encoder`` value names, in table order: ``none`` -> (), ``ngram_conv`` -> (ngram, conv)."""
    parts = () if value == "none" else tuple(value.split("_"))
    order = list(BYTE_ENCODER_PARTS)
    if not all(p in BYTE_ENCODER_PARTS for p in parts) or list(parts) != sorted(set(parts), key=order.index):
        raise PerceiverLMError(
            f"model config: byte_encoder must be one of {', '.join(BYTE_ENCODERS)} (parts of {', '.join(order)} "
            f"joined by '_' in that order), got {value!r}"
        )
    return parts


@dataclass(frozen=True)
class PerceiverConfig:
    """Shape of a byte-level Perceiver IO masked language model.

    The defaults are the 201M-parameter ``deepmind/language-perceiver`` shape (the ``base`` preset).
    """

    vocab_size: int = VOCAB_SIZE
    max_seq_len: int = 2048
    """Longest input in bytes (specials included); also the number of decoder position queries."""
    d_model: int = 768
    """Width of the byte embeddings and of the MLM decoder queries."""
    num_latents: int = 256
    d_latents: int = 1280
    num_cross_heads: int = 8
    num_self_heads: int = 8
    qk_channels: int = 256
    """Query/key channels of encoder cross-attention and processor self-attention (all heads)."""
    v_channels: int = 1280
    """Value channels of encoder cross-attention and processor self-attention (all heads)."""
    num_self_layers: int = 26
    cross_widening: int = 1
    self_widening: int = 1
    decoder_heads: int = 8
    decoder_qk_channels: int = 256
    decoder_v_channels: int = 768
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    """Standard deviation of the initial embeddings and latents."""
    scaled_init: bool = True
    """Draw linear weights with std 1/sqrt(fan_in) rather than init_std: narrow models leave the
    unigram plateau much sooner (0.02 shrinks the signal through every layer of a 64-wide model)."""
    zero_init_residual: bool = True
    """Start the processor's residual branches (attention output, MLP output) at zero, so at step 0
    the processor passes the encoder's latents through unchanged; deep stacks leave the plateau sooner."""
    locality_bias: bool = False
    """Add a learnable-slope locality prior to encoder and decoder cross-attention logits:
    -s_h * |p - c_j| / (max_seq_len / num_latents) between byte/query position p and the centre
    c_j of latent j's share of the window, slopes s_h = 2, 1, 0.5, ... per head. Off in ``base``
    (it is not part of the public checkpoint); it shortens the cold-start plateau of MLM."""
    locality_tiling: bool = False
    """With locality_bias: half of the heads are sharp and offset, tiling each latent's stretch in
    the encoder and reading neighbouring latents in the decoder (see model.LocalityBias)."""
    tie_decoder_queries: bool = False
    """Use the input position embeddings as MLM decoder queries instead of a separate table."""
    span_queries: bool = False
    """MLM decoder queries also say where inside a run of [MASK] bytes their position sits (its offsets from
    the run's start and end, up to 32), which the input shows but a position query must otherwise work out
    from the latents. Under whole-word masking a letter's distribution depends on its place in the word: a
    model that knows a masked word's class but not that place gains little, so without it the class and the
    place are learnt together, slowly (measured: docs/synthetic_transfer.md). Not in the public checkpoint."""
    byte_encoder: str = "none"
    """What gives each byte its neighbourhood before the latents read it: ``none`` (plain token +
    position embedding, the public checkpoint's shape) or parts of `BYTE_ENCODER_PARTS` joined by
    "_": ``ngram`` (hashed n-gram embeddings, n = 3..8, added to them), ``conv`` (residual 1-D
    convolutions over the embeddings), ``ngram_conv`` (both). `byte_encoder_parts` parses it."""
    byte_encoder_layers: int = 2
    """Convolution layers of the ``conv`` part."""
    byte_encoder_kernel: int = 5
    """Convolution width in bytes (odd) of the ``conv`` part."""
    ngram_buckets: int = 16384
    """Rows of the shared hashed n-gram table of the ``ngram`` part."""
    zero_init_positions: bool = False
    """Start the learned byte-position embeddings at zero. With the locality priors, position is
    known from step 0 anyway; random position vectors as large as the byte embeddings would drown
    which byte sits where (SST-2 from random init, `small`: 60.7 -> 70.9 % dev accuracy at 600 steps)."""
    trim_latents: bool = False
    """With locality_bias: an input shorter than the window uses only the latents whose stretch
    starts inside it (for a batch, inside its longest input; each example reads only its own).
    Short inputs then cost their length, and a task query reads only latents that hold text."""

    def __post_init__(self) -> None:
        check_instance(self, lambda name: f"model config: {name}")
        for f in fields(self):
            value = getattr(self, f.name)
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and not 0 < value <= SIZE_LIMITS.get(f.name, DEFAULT_SIZE_LIMIT)
            ):
                raise PerceiverLMError(
                    f"model config: {f.name} must be a positive integer of at most "
                    f"{SIZE_LIMITS.get(f.name, DEFAULT_SIZE_LIMIT):,}, got {value}"
                )
        if self.vocab_size < VOCAB_SIZE:
            raise PerceiverLMError(f"model config: vocab_size must be at least {VOCAB_SIZE}, got {self.vocab_size}")
        for heads, name, channels in (
            (self.num_cross_heads, "qk_channels", self.qk_channels),
            (self.num_cross_heads, "v_channels", self.v_channels),
            (self.num_self_heads, "qk_channels", self.qk_channels),
            (self.num_self_heads, "v_channels", self.v_channels),
            (self.decoder_heads, "decoder_qk_channels", self.decoder_qk_channels),
            (self.decoder_heads, "decoder_v_channels", self.decoder_v_channels),
        ):
            if channels % heads:
                raise PerceiverLMError(
                    f"model config: {name}={channels} is not divisible by the number of heads ({heads})"
                )
        if not 0.0 <= self.attention_dropout < 1.0:
            raise PerceiverLMError(f"model config: attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if self.locality_tiling and not self.locality_bias:
            raise PerceiverLMError("model config: locality_tiling needs locality_bias")
        for part in self.byte_encoder_parts:
            problem = BYTE_ENCODER_PARTS[part].problem(self)
            if problem:
                raise PerceiverLMError(f"model config: {problem}")
        if self.trim_latents and not self.locality_bias:
            raise PerceiverLMError(
                "model config: trim_latents needs locality_bias (latents own stretches of the window)"
            )
        if self.locality_bias and self.max_seq_len < self.num_latents:
            raise PerceiverLMError("model config: locality_bias needs max_seq_len >= num_latents")
        if not 0 < self.layer_norm_eps < 1 or not 0 < self.init_std < 10:
            raise PerceiverLMError(
                f"model config: layer_norm_eps must be in (0, 1) and init_std in (0, 10), got {self.layer_norm_eps}, "
                f"{self.init_std}"
            )
        if self.parameter_bound() > MAX_PARAMETERS:
            # Before anything is allocated: a config from a file with absurd sizes gets this line, not an OOM.
            raise PerceiverLMError(
                f"model config: up to {self.parameter_bound():,} parameters (a coarse bound from its sizes), more "
                f"than this toolkit builds ({MAX_PARAMETERS:,}; the base preset has 201M); check the sizes "
                "(d_model, d_latents, num_self_layers, ...)"
            )

    @property
    def byte_encoder_parts(self) -> tuple[str, ...]:
        """The byte encoder's parts (names in `BYTE_ENCODER_PARTS`), in the order they apply; () for ``none``."""
        return parse_byte_encoder(self.byte_encoder)

    def parameter_bound(self) -> int:
        """An upper bound on the masked LM's parameters (the classifier's too, less its task queries and heads),
        from the sizes alone and without torch: each attention block at its own widths, biases and norms included.

        Only a guard against configs far too big to build (`MAX_PARAMETERS`), checked to stay within a small
        factor of the count; the exact count builds the model on the meta device (`model.count_parameters`).
        """
        c = self

        def linear(n_in: int, n_out: int) -> int:
            return (n_in + 1) * n_out

        def block(q: int, kv: int, qk: int, v: int, widening: int) -> int:
            attention = linear(q, qk) + linear(kv, qk) + linear(kv, v) + linear(v, q)
            return attention + linear(q, widening * q) + linear(widening * q, q) + 6 * max(q, kv)

        widest = max(c.cross_widening, c.self_widening)  # the decoder's MLP is no wider than these
        blocks = (
            block(c.d_latents, c.d_model, c.qk_channels, c.v_channels, c.cross_widening)
            + c.num_self_layers * block(c.d_latents, c.d_latents, c.qk_channels, c.v_channels, c.self_widening)
            + block(c.d_model, c.d_latents, c.decoder_qk_channels, c.decoder_v_channels, widest)
        )
        # Byte and position tables, decoder queries, latents; output bias and locality slopes.
        tables = (c.vocab_size + 2 * c.max_seq_len) * c.d_model + c.num_latents * c.d_latents
        extras = c.vocab_size + 2 * max(c.num_cross_heads, c.decoder_heads) + 4 * c.d_model
        parts = sum(BYTE_ENCODER_PARTS[part].max_parameters(c) for part in c.byte_encoder_parts)
        return blocks + tables + extras + parts

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> PerceiverConfig:
        try:
            return cls(**check_fields(cls, data, source, "model config field"))
        except PerceiverLMError as err:
            raise PerceiverLMError(f"{source}: {err}" if not str(err).startswith(source) else str(err)) from None

    def replace(self, **changes: Any) -> PerceiverConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def differences(self, other: PerceiverConfig, mine: str, theirs: str) -> str:
        """The fields where ``other`` differs, as ``field: MINE value vs THEIRS value`` joined by semicolons."""
        return "; ".join(
            f"{k}: {mine} {v!r} vs {theirs} {getattr(other, k)!r}"
            for k, v in self.to_dict().items()
            if getattr(other, k) != v
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PerceiverConfig:
        """The model config a checkpoint's config.json holds; a transformers checkpoint's is refused, saying to
        convert it (its fields are transformers', each an unknown field here)."""
        data = read_json(path, "model config")
        if is_transformers_config(data):
            folder = Path(path).parent
            architectures = data.get("architectures")
            named = (
                f" ({', '.join(map(str, architectures))})" if isinstance(architectures, list) and architectures else ""
            )
            raise PerceiverLMError(
                f"{folder}: a transformers checkpoint{named}, not a perceiver-lm one; convert it first: "
                f"perceiver-lm convert OUT --from-transformers {folder}, then use OUT"
            )
        return cls.from_dict(data, source=str(path))


def is_transformers_config(data: Any) -> bool:
    """Whether a config.json's content is Hugging Face transformers' for a Perceiver model (its ``model_type`` is
    "perceiver" or an entry of its ``architectures`` names Perceiver), rather than a perceiver-lm model config."""
    if not isinstance(data, dict):
        return False
    architectures = data.get("architectures")
    named = isinstance(architectures, list) and any("Perceiver" in str(a) for a in architectures)
    return data.get("model_type") == "perceiver" or named


PRESETS: dict[str, PerceiverConfig] = {
    # Unit tests: well under 1M parameters, short windows.
    "tiny": PerceiverConfig(
        max_seq_len=128,
        d_model=64,
        num_latents=16,
        d_latents=96,
        num_cross_heads=4,
        num_self_heads=4,
        qk_channels=32,
        v_channels=96,
        num_self_layers=2,
        decoder_heads=4,
        decoder_qk_channels=32,
        decoder_v_channels=64,
        attention_dropout=0.0,
        locality_bias=True,
        locality_tiling=True,
        tie_decoder_queries=True,
    ),
    # CPU experiments and the default: 2048-byte windows like `base`; 128 latents keep a training step
    # affordable on two cores. Hashed n-grams + convolutions give each byte its neighbourhood before the
    # latents read it; short inputs use only the latents over their text (measured: docs/studies.md, byte encoder).
    "small": PerceiverConfig(
        max_seq_len=2048,
        d_model=256,
        num_latents=128,
        d_latents=384,
        num_cross_heads=8,
        num_self_heads=8,
        qk_channels=256,
        v_channels=384,
        num_self_layers=6,
        cross_widening=1,
        self_widening=4,
        decoder_heads=8,
        decoder_qk_channels=128,
        decoder_v_channels=256,
        attention_dropout=0.0,
        locality_bias=True,
        locality_tiling=True,
        tie_decoder_queries=True,
        byte_encoder="ngram_conv",
        zero_init_positions=True,
        trim_latents=True,
    ),
    # Exactly the public deepmind/language-perceiver shape (201M parameters).
    "base": PerceiverConfig(),
}


def get_preset(name: str) -> PerceiverConfig:
    """Return a named preset, or fail with the list of known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise PerceiverLMError(f"unknown preset {shown(name)}; choose one of: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class TaskSpec:
    """One task of the multi-task query decoder: its name and output count (1 = regression), and for a task
    that is not built in, ``about``: how it reads its data (a JSON table its job writes and reads back, so
    that evaluation and prediction read the model's own columns and label names). A ``per_word`` task (tagging)
    has an output per word, decoded by positional queries at the words' positions instead of the task query."""

    name: str
    num_outputs: int
    about: dict[str, Any] | None = None
    per_word: bool = False


@dataclass(frozen=True)
class MultiTaskConfig:
    """The task-query decoder on top of an encoder: which tasks, and the width of their heads.

    Saved beside the model config as ``tasks.json``.
    """

    tasks: tuple[TaskSpec, ...]
    head_hidden: int = 768  # the Perceiver IO paper's head width
    # Heads of the task query's cross-attention over the latents (the encoder's qk/v channels split
    # over them); None: the model's decoder_heads, as in checkpoints written before this field.
    query_heads: int | None = None
    # Bytes of each example the model was fine-tuned to read (longer than its window: read as consecutive
    # windows); None: the model's window. Evaluation and prediction read as many.
    max_length: int | None = None
    # Bytes per window when an input is longer than that (read as consecutive windows); None: the model's
    # max_seq_len. Shorter windows cost less per byte (the cross-attention of a window grows with its square).
    window: int | None = None
    # Per-word tasks: each word's output also reads the byte features at its first and last bytes (the word itself,
    # through the byte encoder's n-grams and convolutions), beside what its positional query gathers from the latents.
    word_features: bool = False

    def __post_init__(self) -> None:
        if not self.tasks:
            raise PerceiverLMError("task config: at least one task is needed")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise PerceiverLMError(f"task config: task names repeat ({', '.join(map(str, names))})")
        for task in self.tasks:
            if not (
                isinstance(task.name, str)
                and task.name.isidentifier()
                and matches(int, task.num_outputs)
                and 1 <= task.num_outputs <= 1024
                and isinstance(task.per_word, bool)
            ):
                raise PerceiverLMError(
                    f"task config: bad task {shown(task)} (names are identifiers, num_outputs an integer in 1..1024)"
                )
        if not matches(int, self.head_hidden) or not 1 <= self.head_hidden <= DEFAULT_SIZE_LIMIT:
            raise PerceiverLMError(
                f"task config: head_hidden must be an integer in 1..{DEFAULT_SIZE_LIMIT}, got {shown(self.head_hidden)}"
            )

        if self.max_length is not None and (not matches(int, self.max_length) or not 4 <= self.max_length <= 1 << 24):
            raise PerceiverLMError(
                f"task config: max_length must be an integer in 4..16777216, got {shown(self.max_length)}"
            )
        if self.window is not None and (not matches(int, self.window) or not 1 <= self.window <= 1 << 24):
            raise PerceiverLMError(f"task config: window must be an integer in 1..16777216, got {shown(self.window)}")
        if not isinstance(self.word_features, bool):
            raise PerceiverLMError(f"task config: word_features must be true or false, got {shown(self.word_features)}")
        if self.query_heads is not None and (not matches(int, self.query_heads) or not 1 <= self.query_heads <= 1024):
            raise PerceiverLMError(
                f"task config: query_heads must be an integer in 1..1024, got {shown(self.query_heads)}"
            )

    def heads_for(self, config: PerceiverConfig) -> int:
        """The task query's heads on top of ``config``, checked against the channels they split."""
        heads = config.decoder_heads if self.query_heads is None else self.query_heads
        for name in ("qk_channels", "v_channels"):
            if getattr(config, name) % heads:
                raise PerceiverLMError(
                    f"task config: the task query's {heads} heads do not divide the encoder's {name}="
                    f"{getattr(config, name)}; set query_heads to a divisor of qk_channels and v_channels"
                )
        return heads

    @property
    def sentence_tasks(self) -> tuple[int, ...]:
        """Indices of the tasks read by a task query (one output per example), in order."""
        return tuple(i for i, t in enumerate(self.tasks) if not t.per_word)

    @property
    def has_word_tasks(self) -> bool:
        return any(t.per_word for t in self.tasks)

    def index(self, name: str) -> int:
        for i, task in enumerate(self.tasks):
            if task.name == name:
                return i
        raise PerceiverLMError(f"this model has no task {shown(name)}; it has: {', '.join(t.name for t in self.tasks)}")

    def to_dict(self) -> dict[str, Any]:
        # Fields at their defaults are left out: a sentence-task model's tasks.json reads as before they existed.
        tasks = [
            {k: v for k, v in dataclasses.asdict(t).items() if k in ("name", "num_outputs") or v not in (None, False)}
            for t in self.tasks
        ]
        out = {"tasks": tasks, "head_hidden": self.head_hidden}
        optional = {"query_heads": self.query_heads, "max_length": self.max_length, "window": self.window}
        flags = {"word_features": True} if self.word_features else {}
        return {**out, **{k: v for k, v in optional.items() if v is not None}, **flags}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "task config") -> MultiTaskConfig:
        expected = '{"tasks": [{"name": ..., "num_outputs": ...}, ...], "head_hidden": ...}'
        tasks = data.get("tasks") if isinstance(data, dict) else None
        if not isinstance(tasks, list) or not all(
            isinstance(t, dict)
            and {"name", "num_outputs"} <= set(t) <= {"name", "num_outputs", "about", "per_word"}
            and isinstance(t.get("about"), (dict, type(None)))
            for t in tasks
        ):
            raise PerceiverLMError(f"{source}: not a task config (expected {expected}, got {shown(data)})")
        try:
            specs = tuple(TaskSpec(**t) for t in tasks)
            return cls(
                specs,
                data.get("head_hidden", 768),
                data.get("query_heads"),
                data.get("max_length"),
                data.get("window"),
                data.get("word_features", False),
            )
        except PerceiverLMError as err:
            raise PerceiverLMError(f"{source}: {err}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> MultiTaskConfig:
        return cls.from_dict(read_json(path, "task config"), str(path))


def model_config(
    preset: str | None = None, overrides: dict[str, Any] | None = None, source: str = "model overrides"
) -> PerceiverConfig:
    """A preset (default: ``small``) with some of its fields replaced, validated like a config file.

    Args:
        preset: a name in `PRESETS`.
        overrides: model config fields to change (a config file's ``[model]`` table); each is
            type- and range-checked, unknown names refused.
        source: where the overrides come from, for messages ("--config run.toml").
    """
    if not isinstance(overrides, (dict, type(None))):
        raise PerceiverLMError(f"{source}: `model` must be a table of model config fields, got {shown(overrides)}")
    return PerceiverConfig.from_dict({**get_preset(preset or "small").to_dict(), **(overrides or {})}, source)
