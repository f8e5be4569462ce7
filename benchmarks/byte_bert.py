"""A byte-level BERT-style encoder: the Perceiver IO paper's FLOPs-matched baseline.

Self-attention over every byte (cost O(L^2) per layer), pre-LayerNorm blocks built from the same
`Attention`/`Block` modules as the Perceiver, tied output embedding, and, like ours, logits only at
the asked-for positions. For benchmarks only; it is not part of the library.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from perceiver_lm.model import Attention, Block


class ByteBERT(nn.Module):
    def __init__(
        self, vocab_size: int, max_seq_len: int, width: int, layers: int, heads: int, widening: int = 4
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_seq_len, width)
        self.layers = nn.ModuleList(
            Block(
                Attention(q_dim=width, kv_dim=width, qk_channels=width, v_channels=width, heads=heads, cross=False),
                dim=width,
                widening=widening,
                eps=1e-5,
                query_residual=True,
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.output_bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, input_ids: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor:
        """Logits [B, Q, vocab] at query_positions [B, Q] for ids [B, L]."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.token_embedding(input_ids) + self.position_embedding(positions)  # [B, L, D]
        for layer in self.layers:
            h = layer(h).hidden
        picked = h.gather(1, query_positions[..., None].expand(-1, -1, h.shape[-1]))  # [B, Q, D]
        return self.norm(picked) @ self.token_embedding.weight.T + self.output_bias


def forward_flops(model: nn.Module, *args: torch.Tensor, **kwargs: torch.Tensor) -> int:
    """Floating-point operations of one forward (matmuls and attention, as torch counts them)."""
    # Not under no_grad: FlopCounterMode's module tracker trips over parameter views made there.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return counter.get_total_flops()


def matched_shape(target_flops: int, length: int, query_positions: torch.Tensor, vocab_size: int = 262) -> dict:
    """The (width, layers) byte-BERT whose forward at ``length`` bytes costs closest to ``target_flops``.

    Widths 64..512 with 64-channel heads; ties go to the wider model (the paper's byte BERT is
    shallow and narrow because attention over every byte eats the budget).
    """
    ids = torch.zeros(query_positions.shape[0], length, dtype=torch.long)
    best = None
    for width in range(64, 513, 64):
        per_layer = forward_flops(ByteBERT(vocab_size, length, width, 1, width // 64), ids, query_positions)
        layers = max(1, round(target_flops / per_layer))
        shape = dict(width=width, layers=layers, heads=width // 64)
        flops = forward_flops(ByteBERT(vocab_size, length, **shape), ids, query_positions)
        miss = abs(flops / target_flops - 1)
        if best is None or miss <= best[0] + 1e-9:
            best = (miss, shape)
    return best[1]
