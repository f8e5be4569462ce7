"""Optimisers and learning-rate schedule for pretraining: AdamW, LAMB, warm-up + cosine."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from perceiver_lm.errors import PerceiverLMError


def adamw(params, lr: float) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (CPU and CUDA): `small`'s optimizer step 27.6 -> 6.9 ms on 2 CPU cores."""
    return torch.optim.AdamW(params, lr=lr, fused=True)


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2019): Adam moments with a per-tensor trust ratio ||w|| / ||update||.

    Decoupled weight decay is part of the update before the trust ratio, as in the paper.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        if lr <= 0:
            raise PerceiverLMError(f"lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                step = state["step"]  # a tensor: the bias corrections need no .item(), so no device sync
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = exp_avg / (1 - beta1**step)
                v_hat = exp_avg_sq / (1 - beta2**step)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_(update * trust, alpha=-group["lr"])
        return loss


def parameter_groups(
    model: nn.Module, weight_decay: float, schedule_of: Callable[[str], tuple[float, int]] | None = None
) -> list[dict]:
    """Decay matrices only: biases, LayerNorm gains, latents, embeddings and slopes are not decayed.

    ``schedule_of(name)`` gives a parameter's learning-rate scale and the step before which its rate
    is 0 (``lr_scale`` and ``start_step`` of its group, which the training loop applies); default 1 and 0.
    """
    groups: dict[tuple[bool, float, int], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = param.ndim == 2 and "embedding" not in name and "latents" not in name
        scale, start = schedule_of(name) if schedule_of else (1.0, 0)
        group = groups.setdefault(
            (is_matrix, scale, start),
            {"params": [], "weight_decay": weight_decay if is_matrix else 0.0, "lr_scale": scale, "start_step": start},
        )
        group["params"].append(param)
    # Decayed groups first: with the default schedule that is the two groups older checkpoints hold, in order.
    return [groups[key] for key in sorted(groups, key=lambda k: (not k[0], -k[1], k[2]))]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
