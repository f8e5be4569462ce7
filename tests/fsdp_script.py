"""Train `tiny` a few steps with torch FSDP2 (2 gloo processes) or in one process, checkpointing and
resuming through the toolkit's gather/load functions. Run by tests/test_sharded.py.

Usage: python fsdp_script.py single|sharded OUT_DIR
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from perceiver_lm import PRESETS, PerceiverLM
from perceiver_lm import checkpoint as ckpt
from perceiver_lm.optim import adamw, parameter_groups
from perceiver_lm.resume import gather_state, load_state
from perceiver_lm.training import masked_lm_loss

CONFIG = PRESETS["tiny"].replace(attention_dropout=0.0)  # no dropout: one process and two see the same model
FIRST, SECOND = 3, 2  # steps before the checkpoint, steps after resuming from it


def batches(count: int) -> list[dict[str, torch.Tensor]]:
    """Fixed global batches of 4 windows; a sharded run gives each of its 2 processes one half."""
    generator = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(count):
        ids = torch.randint(6, 262, (4, 48), generator=generator)
        positions = torch.stack([torch.randperm(48, generator=generator)[:6] for _ in range(4)])
        out.append({"input_ids": ids, "query_positions": positions, "labels": ids.gather(1, positions)})
    return out


def halves(batch, rank=None):
    parts = [{k: v[i * 2 : (i + 1) * 2] for k, v in batch.items()} for i in range(2)]
    return parts if rank is None else [parts[rank]]


def build(sharded: bool):
    torch.manual_seed(0)
    model = PerceiverLM(CONFIG)
    if sharded:
        from torch.distributed.fsdp import fully_shard

        from perceiver_lm.model import Block

        # As Accelerate's transformer-based auto wrap with `Block` does: one shard unit per attention block.
        for block in [m for m in model.modules() if isinstance(m, Block)]:
            fully_shard(block)
        fully_shard(model)
    return model, adamw(parameter_groups(model, 0.01), lr=3e-3)


def train(model, optimizer, steps, rank):
    for batch in steps:
        parts = halves(batch, rank)
        # One process averages the two halves' losses; two processes each take one half and FSDP averages
        # their gradients: the same update.
        loss = sum(
            masked_lm_loss(model(p["input_ids"], query_positions=p["query_positions"]).logits, p["labels"])
            for p in parts
        ) / len(parts)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def save(model, optimizer, folder: Path, main: bool) -> None:
    weights, optimizer_state = gather_state(model, optimizer)  # every process calls it
    if main:
        folder.mkdir(parents=True)
        ckpt.write_model_files(PerceiverLM(CONFIG), CONFIG, folder, {"step": FIRST}, weights)
        ckpt.write_training_files(folder, optimizer_state, {"step": FIRST})


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    sharded = mode == "sharded"
    if sharded:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if sharded else None
    main_process = not sharded or rank == 0
    steps = batches(FIRST + SECOND)
    model, optimizer = build(sharded)
    train(model, optimizer, steps[:FIRST], rank)
    save(model, optimizer, out / "first", main_process)
    if sharded:
        dist.barrier()
    # Resume into a fresh model and optimizer, sharded the same way, from the files alone.
    model, optimizer = build(sharded)
    optimizer_state, _ = ckpt.read_training_files(out / "first")
    load_state(model, optimizer, ckpt.load_state_dict(out / "first"), optimizer_state)
    train(model, optimizer, steps[FIRST:], rank)
    save(model, optimizer, out / "resumed", main_process)
    if sharded:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
