"""Perceiver IO masked language model over bytes: attention, encoder, processor, decoder, model.

Axis vocabulary in shape comments: B batch, L bytes, N latents, Q queries, H heads, D channels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

from perceiver_lm import checkpoint as ckpt
from perceiver_lm.config import NGRAM_SIZES, MultiTaskConfig, PerceiverConfig
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.tokenizer import MASK_ID, PAD_ID


def _tensors_visible_to_hooks(cls: type) -> type:
    """Make a dataclass of tensors a pytree node, so that code walking a module's outputs finds the tensors
    in it: FSDP2 registers its pre-backward hooks (which gather a sharded block's weights again) on them."""
    import torch.utils._pytree as pytree

    if cls not in pytree.SUPPORTED_NODES:  # a reloaded module must not register it twice
        pytree.register_dataclass(cls)
    return cls


@_tensors_visible_to_hooks
@dataclass
class AttentionOutput:
    hidden: torch.Tensor  # [B, Q, D]
    weights: torch.Tensor | None  # [B, H, Q, K] softmax weights before dropout, when asked for


@_tensors_visible_to_hooks
@dataclass
class PerceiverLMOutput:
    """What both models' ``forward`` returns: `PerceiverLM` (masked LM) and `PerceiverClassifier` (one task)."""

    logits: torch.Tensor
    """Masked LM: [B, Q, vocab] logits at the decoded positions. Classifier: [B, C] outputs of the task's head
    (C = 1 for regression); [B, Q, C] for a per-word task, an output per word."""
    encoder_attention: torch.Tensor | None = None
    """[B, H, N, L] encoder cross-attention weights (latents over bytes), pre-dropout. A classifier input read
    as K windows of W bytes: [B, K, H, N, W], window k's latents over window k's bytes."""
    decoder_attention: torch.Tensor | None = None
    """[B, H, Q, N] decoder cross-attention weights (queries over latents; the classifier's one task query:
    Q = 1; a per-word task's word queries: Q words), pre-dropout. Read as K windows: [B, H, Q, K*N], the latents
    of window 0, then window 1, ... (a word reads its own window's: the others' weights are 0)."""


ClassifierOutput = PerceiverLMOutput  # the name `PerceiverClassifier.forward`'s output had; the same class


def _pad_for_fused_cpu_kernel(q: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float) -> bool:
    """Whether zero-padding q/k heads up to the value head size pays off (measured on CPU).

    Encoder cross-attention at [4, 8, 128, 2048], 32/48 channels: 92 -> 49 ms forward + backward;
    at 32/160 (`base`) the padded kernel is slower, and with dropout or an additive bias SDPA takes its
    math path either way.
    """
    dqk, dv = q.shape[-1], v.shape[-1]
    plain_mask = mask is None or mask.dtype == torch.bool
    return q.device.type == "cpu" and dqk < dv <= 2 * dqk and dropout == 0.0 and plain_mask


def _explicit_is_faster(q: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether the explicit softmax beats SDPA (measured on CPU under bf16 autocast).

    In training, CPU SDPA's backward is slow for these shapes and it has no fused kernel for an additive mask
    that needs a gradient (the learned locality bias); plain bf16 matmuls + softmax win, forward + backward at
    batch 4 x 8 heads: latent self-attention 128 x 128 4.8 -> 0.8 ms; encoder cross-attention 128 latents x
    2,048 bytes 38 -> 23 ms (q/k padded for the fused kernel), x 16,384 378 -> 334 ms; decoder 2,400 queries x
    128 latents 29 -> 15 ms; `base`'s 32/160-channel heads 117 -> 19 ms. Without a gradient (inference) SDPA
    stays: its memory does not grow with queries x keys, and it is faster at 16,384 bytes (104 vs 141 ms).
    """
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return False
    return q.requires_grad or (mask is not None and mask.requires_grad)


class Attention(nn.Module):
    """Multi-head attention with pre-LayerNorm on queries (and keys/values when cross-attending).

    Runs through ``F.scaled_dot_product_attention``; ``return_weights=True`` switches to an explicit
    softmax that also returns the weights and must agree with the fused path.
    """

    def __init__(
        self,
        *,
        q_dim: int,
        kv_dim: int,
        qk_channels: int,
        v_channels: int,
        heads: int,
        cross: bool,
        out_dim: int | None = None,
        dropout: float = 0.0,
        eps: float = 1e-5,
    ) -> None:
        """Args: query/key-value widths, total q·k and value channels split over ``heads``, ``cross``
        for attending to another sequence (own LayerNorm on it); the output width defaults to ``q_dim``."""
        super().__init__()
        for name, channels in (("qk_channels", qk_channels), ("v_channels", v_channels)):
            if channels % heads:
                raise PerceiverLMError(f"attention {name}={channels} does not split over {heads} heads")
        out_dim = q_dim if out_dim is None else out_dim
        self.heads = heads
        self.dropout = dropout
        self.q_norm = nn.LayerNorm(q_dim, eps=eps)
        self.kv_norm = nn.LayerNorm(kv_dim, eps=eps) if cross else None
        self.query = nn.Linear(q_dim, qk_channels)
        self.key = nn.Linear(kv_dim, qk_channels)
        self.value = nn.Linear(kv_dim, v_channels)
        self.out = nn.Linear(v_channels, out_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # [B, n, D] -> [B, H, n, D/H]

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> AttentionOutput:
        """Attend from ``x`` [B, Q, D] to ``kv`` [B, K, D] (``x`` itself for self-attention).

        ``mask`` is boolean or additive, broadcastable to [B, H, Q, K]; False/-inf keys are ignored.
        """
        x = self.q_norm(x)
        kv = x if kv is None else self.kv_norm(kv)
        q = self._split(self.query(x))  # [B, H, Q, Dqk]
        k = self._split(self.key(kv))  # [B, H, K, Dqk]
        v = self._split(self.value(kv))  # [B, H, K, Dv]
        dropout = self.dropout if self.training else 0.0
        if mask is not None and mask.is_floating_point():
            mask = mask.to(q.dtype)  # SDPA wants an additive mask in the query's dtype (bf16 under autocast)
        if mask is not None and mask.stride(-1) != 1:
            mask = mask.contiguous()  # the fused GPU kernels read the mask with stride 1 along the keys
        weights = None
        if return_weights or _explicit_is_faster(q, mask):
            # Maps in fp32: bf16 scores would move the weights by ~1 % from the fused path's.
            exact = torch.autocast(q.device.type, enabled=False) if return_weights else contextlib.nullcontext()
            with exact:
                if return_weights:
                    q, k, v = q.float(), k.float(), v.float()
                    mask = mask.float() if mask is not None and mask.is_floating_point() else mask
                # Scaling q, not the scores: one pass fewer over [B, H, Q, K] (training at 16,384 keys: 350 -> 259 ms)
                scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # [B, H, Q, K]
                if mask is not None:
                    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
                weights = scores.softmax(dim=-1)
                context = F.dropout(weights, dropout, self.training) @ v
        else:
            scale = q.shape[-1] ** -0.5
            if _pad_for_fused_cpu_kernel(q, v, mask, dropout):
                # CPU SDPA has a fused kernel only for equal head sizes; zero channels leave q·k unchanged
                q, k = (F.pad(t, (0, v.shape[-1] - t.shape[-1])) for t in (q, k))
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)
        b, h, n, d = context.shape
        context = context.transpose(1, 2).reshape(b, n, h * d)  # [B, H, Q, Dv/H] -> [B, Q, Dv]
        return AttentionOutput(self.out(context), weights)


class MLP(nn.Module):
    def __init__(self, dim: int, widening: int) -> None:
        super().__init__()
        self.dense1 = nn.Linear(dim, dim * widening)
        self.dense2 = nn.Linear(dim * widening, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense2(F.gelu(self.dense1(x)))


class Block(nn.Module):
    """Attention (+ optional query residual) followed by a pre-LayerNorm MLP with a residual."""

    def __init__(self, attention: Attention, *, dim: int, widening: int, eps: float, query_residual: bool) -> None:
        super().__init__()
        self.attention = attention
        self.query_residual = query_residual
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, widening)

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> AttentionOutput:
        attended = self.attention(x, kv, mask, return_weights)
        h = attended.hidden + x if self.query_residual else attended.hidden
        return AttentionOutput(h + self.mlp(self.mlp_norm(h)), attended.weights)


class ConvByteEncoder(nn.Module):
    """Byte-encoder part ``conv``: residual 1-D convolutions over the byte embeddings, so each byte carries
    its neighbourhood in order.

    Without it a latent is a softmax-weighted sum of per-byte values from token + position: close to
    a bag of its bytes, and the processor must rebuild which byte was where. Padding is zeroed before
    every convolution, so a real byte never sees padding (outputs are padding-invariant).
    """

    def __init__(self, dim: int, layers: int, kernel: int, eps: float) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=eps) for _ in range(layers))
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel, padding=kernel // 2) for _ in range(layers))

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Contextualise embeddings [B, L, D]; ``keep`` [B, L] is True on real bytes (None: no padding)."""
        for norm, conv in zip(self.norms, self.convs, strict=True):
            h = norm(x)
            if keep is not None:
                h = h * keep[..., None].to(h.dtype)
            if torch.compiler.is_compiling():
                h = _conv_as_matmuls(conv, h)
            else:
                # [B, L, D] -> [B, D, L] -> [B, L, D]; contiguous, so that GELU's backward reads its input and its
                # gradient in one layout (with one of them transposed, CPU bf16 gelu_backward runs ~15x slower)
                h = conv(h.transpose(1, 2)).transpose(1, 2).contiguous()
            x = x + F.gelu(h)
        return x


def _conv_as_matmuls(conv: nn.Conv1d, h: torch.Tensor) -> torch.Tensor:
    """``conv`` (odd kernel K, same padding) over [B, L, D] as K shifted matmuls, for compiled models: inductor's
    convolution backward fixes the length, so every new input length would compile again; matmuls stay dynamic
    (and cost the same there: `small`'s compiled step 0.229 -> 0.227 s)."""
    k, length = conv.kernel_size[0], h.shape[1]
    padded = F.pad(h, (0, 0, k // 2, k // 2))  # [B, L + K - 1, D]
    return sum(F.linear(padded[:, i : i + length], conv.weight[:, :, i]) for i in range(k)) + conv.bias


class HashedNgrams(nn.Module):
    """Byte-encoder part ``ngram``: hashed n-gram embeddings (BLT-style), the n-gram ending at each byte, for
    each n, looked up and added.

    One shared table; the bucket of an n-gram hashes its ids and n. N-grams reach back only, so they never
    read padding on the right; before the start of the input they read ``[PAD]``.
    """

    MODULUS = 2_147_483_647  # 2**31 - 1: the rolling hash stays far from int64 overflow

    def __init__(self, dim: int, sizes: tuple[int, ...], buckets: int) -> None:
        super().__init__()
        self.sizes = sizes
        self.buckets = buckets
        self.table = nn.Embedding(buckets, dim)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Embeddings [B, L, D] plus the n-gram features of ids [B, L] (padding is never read)."""
        return x + self.features(input_ids)

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Sum of the n-gram embeddings [B, L, D] for ids [B, L]."""
        b, length = input_ids.shape
        h = torch.zeros_like(input_ids)
        buckets = []
        for k in range(max(self.sizes)):
            back = F.pad(input_ids, (k, 0))[:, :length]  # [B, L]: the id k bytes back
            h = (h * 263 + back + 1) % self.MODULUS
            n = k + 1
            if n in self.sizes:
                buckets.append((h * 2_654_435_761 + n * 97_003) % self.MODULUS % self.buckets)
        # One bag lookup instead of one per n: a single dense table gradient in backward, not |sizes| of them.
        bags = torch.stack(buckets, dim=-1).view(b * length, len(buckets))  # [B*L, |sizes|]
        total = F.embedding_bag(bags, self.table.weight, mode="sum").view(b, length, -1)  # [B*L, D] -> [B, L, D]
        return total / math.sqrt(len(self.sizes))


# The module of each byte-encoder part of `config.BYTE_ENCODER_PARTS` (same names): the attribute of
# `PerceiverEncoder` that holds it (its weights are saved as ``encoder.<attribute>.*``, so the attribute is
# part of the checkpoint format) and how a config builds it. A part's module maps (embeddings [B, L, D],
# ids [B, L], keep [B, L] True on real bytes or None) to new embeddings [B, L, D].
BYTE_ENCODER_MODULES: dict[str, tuple[str, Callable[[PerceiverConfig], nn.Module]]] = {
    "ngram": ("ngrams", lambda c: HashedNgrams(c.d_model, NGRAM_SIZES, c.ngram_buckets)),
    "conv": (
        "convs",
        lambda c: ConvByteEncoder(c.d_model, c.byte_encoder_layers, c.byte_encoder_kernel, c.layer_norm_eps),
    ),
}


def build_byte_encoder(config: PerceiverConfig) -> dict[str, nn.Module]:
    """The byte encoder of ``config``: its parts' modules by `PerceiverEncoder` attribute, in the order they apply
    (and are built, which fixes the weights a seed gives)."""
    modules = (BYTE_ENCODER_MODULES[part] for part in config.byte_encoder_parts)
    return {attribute: build(config) for attribute, build in modules}


class LocalityBias(nn.Module):
    """Learnable-slope locality prior on cross-attention logits between byte positions and latents.

    Latent j "owns" the stretch of S = max_seq_len / num_latents bytes centred at
    c_j = (j + 1/2) * S. Head h adds -s_h * |p - c_j - o_h| / S to the logits between position p
    and latent j. Context heads (o_h = 0, slopes 2, 1, 0.5, ...) read near and far. With tiling,
    the first half of the heads are sharp and offset instead: in the encoder they tile latent j's
    own stretch (so a latent holds its bytes in order, like a patch embedding), in the decoder
    they read the neighbouring latents one by one. Both together give a masked byte's neighbours a
    position-aware path to its decoder query from step 0.
    """

    def __init__(self, heads: int, num_latents: int, max_seq_len: int, role: str, tiled: bool) -> None:
        super().__init__()
        self.stride = max_seq_len / num_latents
        tiles = heads // 2 if tiled else 0
        # Plain Python, so that a model can be built on the meta device too.
        slopes = [2.0 * 0.5 ** (h - tiles) for h in range(heads)]  # context heads: 2, 1, 0.5, ...
        offsets = [0.0] * heads
        for h in range(tiles):
            if role == "encoder":
                offsets[h], slopes[h] = (h + 0.5) / tiles - 0.5, 2.0 * tiles  # sub-cells of the latent's stretch
            else:
                offsets[h], slopes[h] = h - (tiles - 1) / 2, 2.0  # neighbouring latents
        self.slopes = nn.Parameter(torch.tensor(slopes))
        self._geometry = [o * self.stride for o in offsets], num_latents
        self.register_buffer("offsets", torch.empty(heads), persistent=False)
        self.register_buffer("centres", torch.empty(num_latents), persistent=False)
        self._set_geometry(self.slopes.device)

    def _set_geometry(self, device: torch.device) -> None:
        offsets, num_latents = self._geometry
        if device.type == "meta":  # no values to compute (and arange there would import torch._dynamo: ~1 s)
            self.offsets = torch.empty(len(offsets), dtype=torch.float32, device=device)
            self.centres = torch.empty(num_latents, dtype=torch.float32, device=device)
            return
        self.offsets = torch.tensor(offsets, dtype=torch.float32, device=device)
        self.centres = (torch.arange(num_latents, dtype=torch.float32, device=device) + 0.5) * self.stride

    def _apply(self, fn, recurse=True):
        # Positions, centres and offsets stay fp32 whatever the model is cast to: bf16 would round a
        # centre of 1028 to 1024, moving every latent's stretch. Rebuilt exactly on the new device.
        super()._apply(fn, recurse)
        self._set_geometry(self.slopes.device)
        return self

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Bias [..., H, P, N] for positions [..., P] against every latent."""
        shifted = positions[..., None, :, None].float() - self.offsets[:, None, None]  # [..., H, P, 1]
        distance = (shifted - self.centres).abs() / self.stride  # [..., H, P, N]
        return -self.slopes[:, None, None] * distance


@_tensors_visible_to_hooks
@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # [B, N, D] latents after the processor
    weights: torch.Tensor | None  # [B, H, N, L] encoder cross-attention weights, when asked for
    latent_mask: torch.Tensor | None  # [B, N] True where a latent holds the example's text (trimmed latents)
    features: torch.Tensor | None = None  # [B, L, D] the byte features the latents read


class PerceiverEncoder(nn.Module):
    """Bytes -> latents: embeddings, byte encoder, encoder cross-attention, latent self-attention processor."""

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        c = config
        self.config = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.d_model)
        self.position_embedding = nn.Embedding(c.max_seq_len, c.d_model)
        byte_encoder = build_byte_encoder(c)
        for attribute, _ in BYTE_ENCODER_MODULES.values():
            setattr(self, attribute, byte_encoder.get(attribute))  # None: the part is off (not registered)
        self.byte_encoder_attributes = tuple(byte_encoder)  # its parts, in the order they apply
        self.latents = nn.Parameter(torch.empty(c.num_latents, c.d_latents))
        cross = Attention(
            q_dim=c.d_latents,
            kv_dim=c.d_model,
            qk_channels=c.qk_channels,
            v_channels=c.v_channels,
            heads=c.num_cross_heads,
            cross=True,
            dropout=c.attention_dropout,
            eps=c.layer_norm_eps,
        )
        self.cross = Block(cross, dim=c.d_latents, widening=c.cross_widening, eps=c.layer_norm_eps, query_residual=True)
        self.layers = nn.ModuleList(
            Block(
                Attention(
                    q_dim=c.d_latents,
                    kv_dim=c.d_latents,
                    qk_channels=c.qk_channels,
                    v_channels=c.v_channels,
                    heads=c.num_self_heads,
                    cross=False,
                    dropout=c.attention_dropout,
                    eps=c.layer_norm_eps,
                ),
                dim=c.d_latents,
                widening=c.self_widening,
                eps=c.layer_norm_eps,
                query_residual=True,
            )
            for _ in range(c.num_self_layers)
        )
        self.locality = (
            LocalityBias(c.num_cross_heads, c.num_latents, c.max_seq_len, "encoder", c.locality_tiling)
            if c.locality_bias
            else None
        )
        self.gradient_checkpointing = False

    def active_latents(self, length: int) -> int:
        """How many latents an input of ``length`` ids uses: all, or with trim_latents those starting inside it."""
        c = self.config
        if not c.trim_latents:
            return c.num_latents
        return max(1, min(c.num_latents, math.ceil(length * c.num_latents / c.max_seq_len)))

    def cross_mask(self, attention_mask: torch.Tensor | None, length: int, latents: int) -> torch.Tensor | None:
        """Mask for the first ``latents`` latents attending to bytes: padding keys off, plus the locality prior."""
        keep = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]
        if self.locality is None:
            return keep
        positions = torch.arange(length, device=self.latents.device)
        bias = self.locality(positions)[..., :latents].transpose(-1, -2).unsqueeze(0)  # [H, L, N] -> [1, H, N, L]
        bias = bias.contiguous()  # fused GPU kernels need stride 1 along the keys, else SDPA falls back to math
        return bias if keep is None else bias.masked_fill(~keep, float("-inf"))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Byte ids [B, L] -> byte features [B, L, D] that the latents read."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)  # [B, L, D]
        keep = None if attention_mask is None else attention_mask.bool()  # [B, L]
        for attribute in self.byte_encoder_attributes:
            x = getattr(self, attribute)(x, input_ids, keep)
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> EncoderOutput:
        """Encode ids [B, L] into latents [B, N, D]; ``weights`` are the encoder maps [B, H, N, L]."""
        b, length = input_ids.shape
        if length > self.config.max_seq_len:
            raise PerceiverLMError(f"input has {length} ids, more than max_seq_len={self.config.max_seq_len}")
        n = self.active_latents(length)
        latent_mask = None
        if self.config.trim_latents and attention_mask is not None:
            # A latent belongs to an example when its stretch starts inside the example's text.
            starts = torch.arange(n, device=input_ids.device) * (self.config.max_seq_len / self.config.num_latents)
            latent_mask = starts[None, :] < attention_mask.sum(1, keepdim=True)  # [B, N]
        x = self.embed(input_ids, attention_mask)
        latents = self.latents[:n].expand(b, -1, -1)  # [B, N, D]
        encoded = self.cross(latents, x, self.cross_mask(attention_mask, length, n), return_weights)
        h = encoded.hidden
        self_mask = None if latent_mask is None else latent_mask[:, None, None, :]  # [B, 1, 1, N]
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                h = checkpoint(lambda t, layer=layer: layer(t, None, self_mask).hidden, h, use_reentrant=False)
            else:
                h = layer(h, None, self_mask).hidden
        return EncoderOutput(h, encoded.weights, latent_mask, x)


def _init_weights(model: nn.Module, config: PerceiverConfig) -> None:
    """Initialise every submodule; the encoder's latents and residual branches get their own rules."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features**-0.5 if config.scaled_init else config.init_std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d):
            fan_in = module.in_channels * module.kernel_size[0]
            nn.init.normal_(module.weight, std=fan_in**-0.5 if config.scaled_init else config.init_std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=config.init_std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, PerceiverEncoder):
            nn.init.normal_(module.latents, std=config.init_std)
    if config.zero_init_positions:
        for encoder in (m for m in model.modules() if isinstance(m, PerceiverEncoder)):
            nn.init.zeros_(encoder.position_embedding.weight)
    if config.zero_init_residual:
        for encoder in (m for m in model.modules() if isinstance(m, PerceiverEncoder)):
            for layer in encoder.layers:
                nn.init.zeros_(layer.attention.out.weight)
                nn.init.zeros_(layer.mlp.dense2.weight)


class PositionalQueries(nn.Module):
    """MLM decoder queries: one learned vector per byte position (or the input's, when tied)."""

    def __init__(self, config: PerceiverConfig, input_positions: nn.Embedding) -> None:
        super().__init__()
        # Held in a list so the shared table is not registered (and saved) a second time here.
        self._tied = [input_positions] if config.tie_decoder_queries else []
        self.embedding = None if config.tie_decoder_queries else nn.Embedding(config.max_seq_len, config.d_model)

    def forward(self, positions: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Queries [B, Q, D] for positions [B, Q] of inputs [B, L]."""
        table = self._tied[0] if self._tied else self.embedding
        return table(positions)


class SpanQueries(PositionalQueries):
    """Positional queries plus where a position sits inside a run of [MASK] ids (config.span_queries)."""

    LONGEST = 32  # offsets past this share one row: longer runs are pieces of unspaced text, not words

    def __init__(self, config: PerceiverConfig, input_positions: nn.Embedding) -> None:
        super().__init__(config, input_positions)
        # Row 0: not masked; row 1 + k: k bytes from the run's start (resp. end), capped at LONGEST.
        self.from_start = nn.Embedding(self.LONGEST + 2, config.d_model)
        self.from_end = nn.Embedding(self.LONGEST + 2, config.d_model)

    def forward(self, positions: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        masked = input_ids == MASK_ID  # [B, L]
        length = input_ids.shape[1]
        at = torch.arange(length, device=input_ids.device).expand_as(input_ids)
        before = torch.where(masked, -1, at).cummax(1).values  # the last unmasked position at or before each
        after = torch.where(masked, length, at).flip(1).cummin(1).values.flip(1)  # the first at or after each
        start = torch.where(masked, 1 + (at - before - 1).clamp(max=self.LONGEST), 0)
        end = torch.where(masked, 1 + (after - at - 1).clamp(max=self.LONGEST), 0)
        start, end = start.gather(1, positions), end.gather(1, positions)  # [B, Q]
        return super().forward(positions, input_ids) + self.from_start(start) + self.from_end(end)


class MLMDecoder(nn.Module):
    """Latents -> hidden states at the asked-for byte positions, by cross-attention from queries."""

    def __init__(self, config: PerceiverConfig, input_positions: nn.Embedding) -> None:
        super().__init__()
        c = config
        self.queries = (SpanQueries if c.span_queries else PositionalQueries)(c, input_positions)
        attention = Attention(
            q_dim=c.d_model,
            kv_dim=c.d_latents,
            qk_channels=c.decoder_qk_channels,
            v_channels=c.decoder_v_channels,
            heads=c.decoder_heads,
            cross=True,
            dropout=c.attention_dropout,
            eps=c.layer_norm_eps,
        )
        self.cross = Block(attention, dim=c.d_model, widening=1, eps=c.layer_norm_eps, query_residual=False)
        self.locality = (
            LocalityBias(c.decoder_heads, c.num_latents, c.max_seq_len, "decoder", c.locality_tiling)
            if c.locality_bias
            else None
        )

    def forward(
        self,
        latents: torch.Tensor,
        positions: torch.Tensor,
        latent_mask: torch.Tensor | None = None,
        return_weights: bool = False,
        input_ids: torch.Tensor | None = None,
    ) -> AttentionOutput:
        """Decode latents [B, N, D] at positions [B, Q] of inputs [B, L] into [B, Q, D]; ``latent_mask`` [B, N]
        hides latents."""
        n = latents.shape[1]
        bias = None if self.locality is None else self.locality(positions)[..., :n]  # [B, H, Q, N]
        if latent_mask is not None:
            keep = latent_mask[:, None, None, :]  # [B, 1, 1, N]
            bias = keep if bias is None else bias.masked_fill(~keep, float("-inf"))
        return self.cross(self.queries(positions, input_ids), latents, bias, return_weights)


class SavedModel(nn.Module):
    """What both models share: saving (the loading lives in each class), memory and size helpers."""

    config: PerceiverConfig
    encoder: PerceiverEncoder

    def save_pretrained(self, directory: str | Path, training: dict[str, Any] | None = None) -> Path:
        """Write weights, config (+ task heads) and a model card atomically into ``directory``.

        Args:
            directory: the folder (replaced only when it holds nothing but a model of ours).
            training: what the model card says about how the model was trained (options, step, eval, ...).
        """
        return ckpt.save_model(self, directory, training)

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute processor activations in backward to save memory."""
        self.encoder.gradient_checkpointing = enabled

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class PerceiverLM(SavedModel):
    """Perceiver IO masked language model over bytes with a tied output embedding."""

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = PerceiverEncoder(config)
        self.decoder = MLMDecoder(config, self.encoder.position_embedding)
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))
        _init_weights(self, config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        query_positions: torch.Tensor | None = None,
        return_attentions: bool = False,
    ) -> PerceiverLMOutput:
        """Predict byte logits at ``query_positions``.

        Args:
            input_ids: [B, L] byte ids.
            attention_mask: [B, L], 1 for real ids and 0 for padding; None means no padding.
            query_positions: [B, Q] positions to decode (typically the masked ones); None decodes
                all L positions.
            return_attentions: also return encoder and decoder attention maps (explicit path).
        """
        b, length = input_ids.shape
        if query_positions is None:
            query_positions = torch.arange(length, device=input_ids.device).expand(b, -1)
        encoded = self.encoder(input_ids, attention_mask, return_attentions)
        decoded = self.decoder(encoded.hidden, query_positions, encoded.latent_mask, return_attentions, input_ids)
        logits = decoded.hidden @ self.encoder.token_embedding.weight.T + self.output_bias  # [B, Q, vocab]
        return PerceiverLMOutput(logits, encoded.weights, decoded.weights)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> PerceiverLM:
        """Load a model saved by ``save_pretrained`` or ``pretrain`` (a checkpoint or run directory)."""
        directory, config, _ = read_buildable(path, "lm")
        return ckpt.load_weights(cls(config), directory, map_location)


class TaskQueries(nn.Module):
    """Multi-task decoder queries: one learned vector per task read by a query, at the latent width."""

    def __init__(self, num_tasks: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tasks, dim)

    def forward(self, slot: int, batch_size: int) -> torch.Tensor:
        """Queries [B, 1, D] for every example of a batch of the task in row ``slot``."""
        return self.embedding.weight[slot].expand(batch_size, 1, -1)


def _head(width: int, hidden: int, outputs: int) -> nn.Sequential:
    # A 2-layer tanh MLP per task, as in the Perceiver IO paper's GLUE heads.
    return nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, outputs))


class TaskDecoder(nn.Module):
    """Latents -> outputs of one task.

    A sentence task's learned query cross-attends to the latents and its head reads one output per example
    ([B, C]). A per-word task (tagging) asks the positional-query decoder of masked-LM pretraining
    (`MLMDecoder`, ``words``) for the bytes where its words start and reads an output per word ([B, Q, C]).
    Either part exists only when some task uses it; heads are indexed by task, queries by sentence task.
    """

    def __init__(self, config: PerceiverConfig, tasks: MultiTaskConfig, input_positions: nn.Embedding) -> None:
        super().__init__()
        c = config
        sentence = tasks.sentence_tasks
        self.query_rows = {task: row for row, task in enumerate(sentence)}
        self.queries = self.cross = self.words = None  # unregistered when no task uses them
        if sentence:
            self.queries = TaskQueries(len(sentence), c.d_latents)
            attention = Attention(
                q_dim=c.d_latents,
                kv_dim=c.d_latents,
                qk_channels=c.qk_channels,
                v_channels=c.v_channels,
                heads=tasks.heads_for(c),
                cross=True,
                dropout=c.attention_dropout,
                eps=c.layer_norm_eps,
            )
            self.cross = Block(attention, dim=c.d_latents, widening=1, eps=c.layer_norm_eps, query_residual=True)
        if tasks.has_word_tasks:
            self.words = MLMDecoder(config, input_positions)
        self.word_features = tasks.word_features
        self.heads = nn.ModuleList(
            _head(c.d_model if t.per_word else c.d_latents, tasks.head_hidden, t.num_outputs) for t in tasks.tasks
        )

    def forward(
        self,
        latents: torch.Tensor,
        task_index: int,
        latent_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, C] of sentence task ``task_index`` from latents [B, N, D], and the query's weights.

        ``latent_mask`` [B, N] hides some latents.
        """
        mask = None if latent_mask is None else latent_mask[:, None, None, :]  # [B, 1, 1, N]
        query = self.queries(self.query_rows[task_index], latents.shape[0])
        attended = self.cross(query, latents, mask, return_weights)  # [B, 1, D]
        return self.heads[task_index](attended.hidden[:, 0]), attended.weights

    def per_word(
        self,
        latents: torch.Tensor,
        task_index: int,
        positions: torch.Tensor,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        latent_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, Q, C] of per-word task ``task_index`` from latents [B, N, D], and the word queries' weights
        [B, H, Q, N]. ``positions`` are each word's byte in inputs [B, L], [B, Q], or its first and last bytes,
        [B, Q, 2]: the query reads at the last. With ``word_features`` the output also adds the byte features
        [B, L, D] (`EncoderOutput.features`) at those bytes: the word itself, beside the context its query
        gathers from the latents."""
        ends = positions if positions.dim() == 3 else positions[..., None]  # [B, Q, E]
        decoded = self.words(latents, ends[..., -1], latent_mask, return_weights, input_ids)
        hidden = decoded.hidden  # [B, Q, D]
        if self.word_features:
            for end in range(ends.shape[-1]):
                index = ends[..., end, None].expand(-1, -1, features.shape[-1])
                hidden = hidden + features.gather(1, index)  # [B, Q, D]
        return self.heads[task_index](hidden), decoded.weights


@dataclass
class Windows:
    """A batch [B, L] cut into K = ceil(L / W) consecutive windows of W bytes, every window its own example."""

    input_ids: torch.Tensor  # [B*K, W] ids, window-major within an example, the tail padded with [PAD]
    attention_mask: torch.Tensor  # [B*K, W] bool, True on real bytes (an empty window: on its first byte only)
    has_text: torch.Tensor  # [B, K] bool, True where a window holds text (window 0 always, so no row is empty)

    @property
    def count(self) -> int:
        """K, the windows per example."""
        return self.has_text.shape[1]


def split_windows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, window: int) -> Windows:
    """Cut ids [B, L] (and the padding mask, None: no padding) into windows of ``window`` bytes.

    A window with no real byte (the tail of a short example in a batch of long ones) still goes through the
    encoder, reading its first [PAD] as if it were text: a window of nothing but masked keys would give NaN
    latents, and a NaN survives a 0 attention weight. ``has_text`` masks such windows out of the task query's
    keys. Shapes stay static (no host sync to find the empty windows, which therefore still cost compute).
    """
    b, length = input_ids.shape
    k = -(-length // window)
    pad = k * window - length
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if pad:
        input_ids = torch.cat((input_ids, input_ids.new_full((b, pad), PAD_ID)), dim=1)
        keep = torch.cat((keep, keep.new_zeros(b, pad)), dim=1)
    ids = input_ids.reshape(b * k, window)  # [B, K*W] -> [B*K, W]
    keep = keep.reshape(b * k, window)
    has_text = keep.any(-1, keepdim=True)  # [B*K, 1]
    first = torch.arange(window, device=keep.device) == 0  # [W]
    keep = keep | (first & ~has_text)  # empty windows read their first byte
    first_window = torch.arange(k, device=keep.device) == 0  # [K]
    return Windows(ids, keep, has_text.view(b, k) | first_window)


class PerceiverClassifier(SavedModel):
    """A Perceiver encoder with the multi-task query decoder (GLUE-style fine-tuning).

    Inputs longer than the window (``max_seq_len``) are read as consecutive windows: each window is encoded
    as its own example (positions restart in every window, as in pretraining) and the task query reads the
    latents of all windows of its example together. Cost grows linearly with the bytes read.
    """

    def __init__(self, config: PerceiverConfig, tasks: MultiTaskConfig) -> None:
        super().__init__()
        if tasks.window is not None and tasks.window > config.max_seq_len:
            raise PerceiverLMError(
                f"task config: window={tasks.window} is longer than the model's max_seq_len={config.max_seq_len}"
            )
        self.config = config
        self.tasks = tasks
        self.encoder = PerceiverEncoder(config)
        self.decoder = TaskDecoder(config, tasks, self.encoder.position_embedding)
        _init_weights(self, config)

    @classmethod
    def from_lm(cls, lm: PerceiverLM, tasks: MultiTaskConfig) -> PerceiverClassifier:
        """Keep a pretrained LM's encoder and processor, and for per-word tasks its positional-query decoder; the
        task queries and heads start fresh."""
        model = cls(lm.config, tasks)
        model.encoder.load_state_dict(lm.encoder.state_dict())
        if model.decoder.words is not None:
            model.decoder.words.load_state_dict(lm.decoder.state_dict())
        return model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        task: int = 0,
        return_attentions: bool = False,
        window: int | None = None,
        windows_per_pass: int | None = None,
        word_positions: torch.Tensor | None = None,
    ) -> PerceiverLMOutput:
        """Outputs of one task's head for a batch of that task: [B, C], or [B, Q, C] for a per-word task.

        Args:
            input_ids: [B, L] byte ids (``[CLS] a [SEP] b [SEP]``, padded), any length L.
            attention_mask: [B, L], 1 for real ids and 0 for padding.
            task: index of the task in ``self.tasks`` (`MultiTaskConfig.index` maps names).
            return_attentions: also return encoder and decoder attention maps (explicit path). For an input
                read as K windows of W bytes the encoder maps are [B, K, H, N, W] and the task query's
                [B, H, 1, K*N] (`PerceiverLMOutput`).
            window: bytes per window, at most ``config.max_seq_len``; default: the task config's ``window``, else
                ``max_seq_len``. An input of at most ``window`` bytes is read exactly as before: one pass, no windows.
            windows_per_pass: encode at most this many windows at a time (None: all B*K at once); bounds the
                memory of inference on long inputs, not that of training, which keeps every pass's activations
                for backward (see `gradient_checkpointing_enable`).
            word_positions: for a per-word task (`TaskSpec.per_word`), where each word is in ``input_ids``: its
                first and last byte positions [B, Q, 2] (the query reads at the last), or one position [B, Q];
                padding rows may repeat any position. Its logits are [B, Q, C] and the decoder maps [B, H, Q, N]
                (windows: each word reads the latents of the window of its last byte only, [B, H, Q, K*N] with
                the other windows' weights 0; a word cut by a window's start is read from there).
        """
        window = self._window(window)
        per_word = self.tasks.tasks[task].per_word
        if per_word != (word_positions is not None):
            name = self.tasks.tasks[task].name
            wanted = "needs word_positions" if per_word else "is read by its task query: no word_positions"
            raise PerceiverLMError(f"task {name} {wanted}")
        if input_ids.shape[1] <= window:
            encoded = self.encoder(input_ids, attention_mask, return_attentions)
            if per_word:
                logits, weights = self.decoder.per_word(
                    encoded.hidden, task, word_positions, encoded.features, input_ids, encoded.latent_mask,
                    return_attentions,
                )  # fmt: skip
            else:
                logits, weights = self.decoder(encoded.hidden, task, encoded.latent_mask, return_attentions)
            return PerceiverLMOutput(logits, encoded.weights, weights)
        return self._forward_windows(
            split_windows(input_ids, attention_mask, window), task, return_attentions, windows_per_pass, word_positions
        )

    def _window(self, window: int | None) -> int:
        limit = self.config.max_seq_len
        if window is None:
            return self.tasks.window or limit
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= limit:
            raise PerceiverLMError(f"window must be an integer in 1..max_seq_len={limit}, got {window!r}")
        return window

    def _forward_windows(
        self,
        windows: Windows,
        task: int,
        return_attentions: bool,
        windows_per_pass: int | None,
        word_positions: torch.Tensor | None = None,
    ) -> PerceiverLMOutput:
        """Encode every window [B*K, W] as its own example; the task query reads [B, K*N, D] latents, a word's
        query the [N, D] latents of its window."""
        b, k = windows.has_text.shape
        total = windows.input_ids.shape[0]
        if windows_per_pass is not None and (
            isinstance(windows_per_pass, bool) or not isinstance(windows_per_pass, int) or windows_per_pass < 1
        ):
            raise PerceiverLMError(f"windows_per_pass must be a positive integer, got {windows_per_pass!r}")
        step = total if windows_per_pass is None else windows_per_pass
        passes = [
            self.encoder(windows.input_ids[i : i + step], windows.attention_mask[i : i + step], return_attentions)
            for i in range(0, total, step)
        ]
        hidden = torch.cat([p.hidden for p in passes]) if len(passes) > 1 else passes[0].hidden  # [B*K, N, D]
        n, d = hidden.shape[1:]
        keys = windows.has_text[:, :, None].expand(b, k, n)  # [B, K, N]
        if passes[0].latent_mask is not None:
            keys = keys & torch.cat([p.latent_mask for p in passes]).view(b, k, n)
        if word_positions is not None:
            features = torch.cat([p.features for p in passes]) if len(passes) > 1 else passes[0].features
            logits, weights = self._words_in_windows(
                hidden, features, keys, windows, task, word_positions, return_attentions
            )
        else:
            latents = hidden.reshape(b, k * n, d)  # [B*K, N, D] -> [B, K*N, D]
            logits, weights = self.decoder(latents, task, keys.reshape(b, k * n), return_attentions)
        maps = None
        if return_attentions:
            maps = torch.cat([p.weights for p in passes])  # [B*K, H, N, W]
            maps = maps.view(b, k, *maps.shape[1:])  # [B, K, H, N, W]
        return PerceiverLMOutput(logits, maps, weights)

    def _words_in_windows(
        self,
        hidden: torch.Tensor,
        features: torch.Tensor,
        keys: torch.Tensor,
        windows: Windows,
        task: int,
        positions: torch.Tensor,
        return_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-word logits [B, Q, C] from window latents [B*K, N, D] and byte features [B*K, W, D]: every window
        decodes all Q words at their positions inside it, and each word keeps the output of the window its first
        byte is in. Decoding costs K times the words', small beside encoding K windows; shapes stay static."""
        b, k = windows.has_text.shape
        width = windows.input_ids.shape[1]
        n = hidden.shape[1]
        ends = positions if positions.dim() == 3 else positions[..., None]  # [B, Q, E]
        which = (ends[..., -1] // width).clamp(max=k - 1)  # [B, Q] the window of each word's last byte
        # A byte in an earlier window than the word's last byte (a word cut by the window's start) is read at
        # that window's start.
        local = torch.where(ends // width == which[..., None], ends % width, 0)  # [B, Q, E]
        local = local.repeat_interleave(k, dim=0)  # [B*K, Q, E]
        # Every window decodes from its own latents, empty ones included (their keys are kept: all-masked keys
        # would give NaN, and a NaN survives the selection below as 0 * NaN in backward).
        keys = keys.reshape(b * k, n)
        logits, weights = self.decoder.per_word(
            hidden, task, local, features, windows.input_ids, keys | ~keys.any(-1, keepdim=True), return_weights
        )  # [B*K, Q, C]
        logits = logits.view(b, k, *logits.shape[1:])  # [B, K, Q, C]
        picked = logits.gather(1, which[:, None, :, None].expand(-1, 1, -1, logits.shape[-1]))[:, 0]  # [B, Q, C]
        if weights is None:
            return picked, None
        h, q = weights.shape[1], weights.shape[2]
        weights = weights.view(b, k, h, q, n).permute(0, 2, 3, 1, 4)  # [B, H, Q, K, N]
        own = torch.arange(k, device=which.device)[None, None, :] == which[:, :, None]  # [B, Q, K]
        weights = weights * own[:, None, :, :, None]  # other windows' latents: weight 0
        return picked, weights.reshape(b, h, q, k * n)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> PerceiverClassifier:
        """Load a model saved by ``save_pretrained`` or GLUE fine-tuning."""
        directory, config, tasks = read_buildable(path, "classifier")
        return ckpt.load_weights(cls(config, tasks), directory, map_location)


class _NoRandomFillOnMeta(TorchFunctionMode):
    """Skips ``normal_`` on meta tensors: it fills nothing there, but its first call imports torch._dynamo (~1 s,
    as much again as loading a model)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) == "normal_":  # torch.nn.init.normal_ (tensor=...) or Tensor.normal_
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def count_parameters(config: PerceiverConfig, tasks: MultiTaskConfig | None = None) -> int:
    """Parameters of the model ``config`` describes (the classifier with ``tasks``, else the masked LM), exactly.

    Builds it on the meta device: allocates no weights and draws no random numbers, so it takes milliseconds
    even for `base` and leaves the seeded state alone.
    """
    with torch.device("meta"), _NoRandomFillOnMeta():
        model = PerceiverLM(config) if tasks is None else PerceiverClassifier(config, tasks)
    return model.num_parameters()


def read_buildable(path: str | Path, kind: str) -> tuple[Path, PerceiverConfig, MultiTaskConfig | None]:
    """`checkpoint.read_model_dir`, and refuse to build anything far bigger than the weights on disk.

    A config.json that claims a huge model beside a small weights file is refused before any allocation
    (counted on the meta device), not after; smaller mismatches are left to `checkpoint.check_state_dict`,
    which names them.
    """
    directory, config, tasks = ckpt.read_model_dir(path, kind)
    stored = ckpt.stored_parameters(directory / ckpt.MODEL_FILE)
    described = count_parameters(config, tasks)
    if described > 2 * stored + 1_000_000:
        raise PerceiverLMError(
            f"{directory / ckpt.CONFIG_FILE}: describes a model of {described:,} parameters, "
            f"but {ckpt.MODEL_FILE} holds {stored:,}; config and weights do not belong together"
        )
    return directory, config, tasks


def load_any(path: str | Path, map_location: str | torch.device = "cpu") -> PerceiverLM | PerceiverClassifier:
    """Load whichever model a checkpoint or run directory holds: a masked LM or a fine-tuned classifier."""
    directory, config, tasks = read_buildable(path, "any")
    model = PerceiverLM(config) if tasks is None else PerceiverClassifier(config, tasks)
    return ckpt.load_weights(model, directory, map_location)
