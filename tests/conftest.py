import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def letter_lines_corpus(seed: int = 0, lines: int = 600) -> str:
    """Lines whose words repeat one random letter per line ("qqq q qqqq"): a masked word is a
    uniformly random letter on its own (4.7 bits) but is given away by the words around it."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(lines):
        letter = chr(97 + rng.integers(26))
        out.append(" ".join(letter * int(n) for n in rng.integers(1, 6, rng.integers(4, 12))))
    return "\n".join(out) + "\n"


@pytest.fixture
def letters_file(tmp_path) -> Path:
    path = tmp_path / "letters.txt"
    path.write_text(letter_lines_corpus())
    return path


def shared_data() -> Path | None:
    """The public benchmark data folder, from PERCEIVER_LM_DATA or ../shared/data beside the repo."""
    env = os.environ.get("PERCEIVER_LM_DATA")
    candidates = [Path(env)] if env else [REPO.parent / "shared" / "data"]
    return next((p for p in candidates if p.is_dir()), None)


def unigram_bits(text: bytes) -> float:
    """Entropy (bits) of the non-whitespace bytes of ``text``: what a model that knows only byte
    frequencies scores on whole-word-masked bytes; uniform over the vocabulary is log2(262) = 8.03."""
    values = np.frombuffer(text, dtype=np.uint8)
    counts = np.bincount(values[~np.isin(values, (9, 10, 13, 32))])
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def two_cpu_processes(port: int, *target: str) -> list[str]:
    """`accelerate launch` of ``target`` as two CPU processes (gloo) on ``port``; run with ACCELERATE_USE_CPU=1."""
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(port), *target),
    ]


def host_syncs(monkeypatch, run) -> int:
    """How many calls of the tensor methods that wait for the device (on a GPU, each is a host sync)
    ``run()`` makes."""
    calls = 0

    def counting(original):
        def wrapper(tensor, *args, **kwargs):
            nonlocal calls
            calls += 1
            return original(tensor, *args, **kwargs)

        return wrapper

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "cpu", "__bool__", "__float__", "__int__"):
            patch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
        run()
    return calls


def sigterm_at(monkeypatch, micro_step: int) -> None:
    """Send this process SIGTERM while the loop runs micro-step ``micro_step`` (as a scheduler would)."""
    from perceiver_lm import trainer

    real = trainer.step_seed

    def step_seed(seed, step, world, rank):
        if step == micro_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(seed, step, world, rank)

    monkeypatch.setattr(trainer, "step_seed", step_seed)


def newest_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from perceiver_lm import checkpoint as ckpt

    with ckpt.safetensors_name(ckpt.list_checkpoints(out)[-1] / "model.safetensors") as name:
        return load_file(name)
