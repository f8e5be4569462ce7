import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import two_cpu_processes, unigram_bits
from perceiver_lm import PRESETS, PerceiverLM, PerceiverLMError
from perceiver_lm.optim import Lamb, warmup_cosine
from perceiver_lm.runtime import resolve_precision
from perceiver_lm.training import TrainingOptions, pretrain

REPO = Path(__file__).resolve().parents[1]
TINY = PRESETS["tiny"]


def _options(data: Path, out: Path, **overrides) -> TrainingOptions:
    base = dict(
        data=[str(data)],
        output_dir=str(out),
        batch_size=8,
        max_steps=20,
        eval_every=10,
        eval_windows=8,
        save_every=10,
        warmup_steps=5,
        report_to="none",
        log_every=5,
    )
    return TrainingOptions(**{**base, **overrides})


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = sorted(run_dir.glob("checkpoint-*"))[-1]
    return load_file(str(latest / "model.safetensors"))


def test_tiny_learns_context_far_below_uniform_and_unigram(letters_file, tmp_path):
    # Masked words are uniformly random letters on their own: unigram = ln 26 = 3.26 nats, uniform
    # over the 256 bytes = 5.55 nats. Only the surrounding words give them away.
    result = pretrain(
        _options(
            letters_file,
            tmp_path / "run",
            batch_size=16,
            max_steps=300,
            eval_every=300,
            save_every=300,
            eval_windows=64,
            lr=3e-3,
            warmup_steps=30,
        ),
        TINY,
    )
    assert result.eval_metrics["loss"] < 1.2, result.eval_metrics
    assert result.eval_metrics["accuracy"] > 0.6, result.eval_metrics
    assert math.log(26) - result.eval_metrics["loss"] > 2.0


def test_run_writes_checkpoints_metrics_and_resumes_exactly(letters_file, tmp_path):
    full = pretrain(_options(letters_file, tmp_path / "full"), TINY)
    assert full.step == 20 and full.checkpoint.name == "checkpoint-0000020"
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [10, 20]
    assert all(r["eval_bits_per_byte"] == pytest.approx(r["eval_loss"] / math.log(2)) for r in evals)
    assert all(r["bytes_per_s"] > 0 for r in records if "train_loss" in r)

    # Stop after one step of the same 20-step schedule, then resume: identical to the uninterrupted run.
    short = tmp_path / "short"
    stopped = pretrain(_options(letters_file, short, max_minutes=0.0), TINY)
    assert stopped.step == 1
    resumed = pretrain(_options(letters_file, short, resume=True), TINY)
    assert resumed.step == 20
    a, b = _weights(tmp_path / "full"), _weights(short)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_needs_resume_and_matching_config(letters_file, tmp_path):
    pretrain(_options(letters_file, tmp_path / "run", max_steps=10), TINY)
    with pytest.raises(PerceiverLMError, match="already holds checkpoints; pass --resume"):
        pretrain(_options(letters_file, tmp_path / "run", max_steps=10), TINY)
    with pytest.raises(PerceiverLMError, match=r"different model config \(num_self_layers: checkpoint 2 vs now 3\)"):
        pretrain(_options(letters_file, tmp_path / "run", max_steps=20, resume=True), TINY.replace(num_self_layers=3))


def test_option_errors(letters_file, tmp_path):
    with pytest.raises(PerceiverLMError, match="--batch-size must be positive"):
        _options(letters_file, tmp_path, batch_size=0)
    with pytest.raises(PerceiverLMError, match="--window 256 is longer than the model's max_seq_len \\(128\\)"):
        pretrain(_options(letters_file, tmp_path / "r", window=256), TINY)


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch, letters_file, tmp_path, capsys):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    zen4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
    sapphire = frozenset({"avx512f", "amx_tile", "amx_bf16"})
    zen3 = frozenset({"avx2", "fma"})
    avx512_only = frozenset({"avx512f", "avx512bw"})  # bf16 is emulated there
    assert resolve_precision("auto", cpu=True, flags=zen4).mode == "bf16"
    assert "avx512_bf16" in resolve_precision("auto", cpu=True, flags=zen4).reason
    assert resolve_precision("auto", cpu=True, flags=sapphire).mode == "bf16"
    assert "amx_bf16" in resolve_precision("auto", cpu=True, flags=sapphire).reason
    for flags in (zen3, avx512_only, frozenset()):
        choice = resolve_precision("auto", cpu=False, flags=flags, gpu=False)
        assert choice.mode == "no" and "no native bf16" in choice.reason
    # asked for explicitly: obeyed, with a warning where it is emulated
    assert resolve_precision("no", cpu=True, flags=zen4).mode == "no"
    assert resolve_precision("bf16", cpu=True, flags=zen3).mode == "bf16"
    assert "slower than fp32" in resolve_precision("bf16", cpu=True, flags=zen3).reason
    assert "slower" not in resolve_precision("bf16", cpu=True, flags=zen4).reason
    with pytest.raises(PerceiverLMError, match="--mixed-precision fp16: CPU autocast has no fp16 path"):
        resolve_precision("fp16", cpu=True, flags=zen4)
    # ACCELERATE_USE_CPU puts a GPU machine's run on the CPU: the CPU decides
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert resolve_precision("auto", cpu=False, flags=zen3, gpu=True).mode == "no"
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    # GPUs: bf16 where it is native (Ampere, 8.0, and later), else fp16 with a loss scaler (V100 7.0, T4 7.5)
    for capability, mode in (((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16")):
        assert resolve_precision("auto", cpu=False, gpu=True, capability=capability).mode == mode
    assert "emulates bf16" in resolve_precision("bf16", cpu=False, gpu=True, capability=(7, 0)).reason
    assert resolve_precision("fp16", cpu=False, gpu=True, capability=(9, 0)).mode == "fp16"
    # the run says which precision it picked and why, in its first lines
    pretrain(
        _options(letters_file, tmp_path / "run", max_steps=2, eval_every=2, save_every=2, mixed_precision="no"), TINY
    )
    assert "fp32 (--mixed-precision no)" in capsys.readouterr().err
    # a second run in the same process may pick another precision (Accelerate's state is per process)
    pretrain(
        _options(letters_file, tmp_path / "run_bf16", max_steps=2, eval_every=2, save_every=2, mixed_precision="bf16"),
        TINY,
    )
    assert "bf16" in capsys.readouterr().err


def test_lamb_and_schedule():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(100, 10, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(55, 10, 100, min_ratio=0.0) == pytest.approx(0.5)
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 8))
    target = torch.randn(8, 8)
    optimizer = Lamb([w], lr=0.05)
    start = (w - target).pow(2).mean().item()
    for _ in range(200):
        loss = (w - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.05 * start


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


@pytest.mark.slow
def test_sigkill_during_training_then_resume_matches_uninterrupted(letters_file, tmp_path):
    common = [
        "pretrain",
        "--preset",
        "tiny",
        "--data",
        str(letters_file),
        "--batch-size",
        "8",
        "--max-steps",
        "60",
        "--save-every",
        "5",
        "--eval-every",
        "1000",
        "--warmup-steps",
        "5",
        "--report-to",
        "none",
        "--keep-checkpoints",
        "100",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        _cli(*common, "--output-dir", str(tmp_path / "full")), check=True, env=env, cwd=REPO, capture_output=True
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(*common, "--output-dir", str(killed)),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not list(killed.glob("checkpoint-00000[1-9]*")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in killed.glob("checkpoint-*"))
    assert done and "checkpoint-0000060" not in done  # killed part-way
    # Whatever the kill interrupted is a hidden temporary directory, never a checkpoint-N that loads half-written.
    assert all(
        p.name.startswith(("checkpoint-", ".checkpoint-", "metrics", ".perceiver-lm.lock")) for p in killed.iterdir()
    )
    resumed = subprocess.run(
        _cli(*common, "--output-dir", str(killed), "--resume"), env=env, cwd=REPO, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    a, b = _weights(tmp_path / "full"), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_cpu_processes_with_gloo_train_on_different_windows_and_save_the_model_they_hold(letters_file, tmp_path):
    # DDP keeps the ranks' weights equal by construction; what this run must show is that the two processes
    # really split the data (each step's windows differ between ranks) and that the checkpoint written by
    # the main process holds the weights both processes end with.
    script = tmp_path / "ddp_run.py"
    script.write_text(
        "import sys, hashlib, json, torch\n"
        "from perceiver_lm import PRESETS\n"
        "from perceiver_lm.training import MaskedLM, TrainingOptions, pretrain\n"
        "import perceiver_lm.trainer as t\n"
        "captured = {'batches': []}\n"
        "original, original_loss = t.save_checkpoint, MaskedLM.loss\n"
        "def spy(run, state):\n"
        "    captured['world'] = run.accelerator.num_processes\n"
        "    captured['rank'] = run.accelerator.process_index\n"
        "    captured['backend'] = str(torch.distributed.get_backend())\n"
        "    model = run.accelerator.unwrap_model(run.model)\n"
        "    captured['weights'] = {n: hashlib.sha256(p.detach().numpy().tobytes()).hexdigest() "
        "for n, p in model.state_dict().items()}\n"
        "    return original(run, state)\n"
        "def loss_spy(self, model, batch):\n"
        "    captured['batches'].append(hashlib.sha256(batch['input_ids'].numpy().tobytes()).hexdigest())\n"
        "    return original_loss(self, model, batch)\n"
        "t.save_checkpoint, MaskedLM.loss = spy, loss_spy\n"
        f"pretrain(TrainingOptions(data=[{str(letters_file)!r}], output_dir={str(tmp_path / 'ddp')!r}, batch_size=4, "
        "max_steps=8, eval_every=4, eval_windows=8, save_every=8, report_to='none'), PRESETS['tiny'])\n"
        f"open({str(tmp_path)!r} + f'/rank{{captured[\"rank\"]}}.json', 'w').write(json.dumps(captured))\n"
        # A launched script ends its process group, as the CLI does: a gloo group torn down at interpreter exit
        # while the other rank is already gone may abort ("terminate called without an active exception").
        "from perceiver_lm.runtime import end_processes\n"
        "end_processes()\n"
    )
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        two_cpu_processes(29533, str(script)), env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["backend"] == "gloo"
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 8
    assert all(a != b for a, b in zip(ranks[0]["batches"], ranks[1]["batches"], strict=True))
    saved = load_file(str(tmp_path / "ddp" / "checkpoint-0000008" / "model.safetensors"))
    on_disk = {n: hashlib.sha256(v.numpy().tobytes()).hexdigest() for n, v in saved.items()}
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert on_disk and all(ranks[0]["weights"][name] == digest for name, digest in on_disk.items())


def test_pretrain_from_a_streamed_dataset(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    text = "\n".join(f"streamed line {i} with a few words" for i in range(2000))
    (folder / "part.txt").write_text(text)
    result = pretrain(
        TrainingOptions(
            dataset=str(folder),
            streaming=True,
            output_dir=str(tmp_path / "run"),
            batch_size=4,
            max_steps=30,
            eval_every=15,
            eval_windows=4,
            save_every=30,
            report_to="none",
            warmup_steps=3,
            lr=2e-3,
        ),
        TINY,
    )
    assert result.step == 30 and result.checkpoint.name == "checkpoint-0000030"
    # it learned from the stream: from uniform (8.03 bits) to about the text's byte frequencies (measured 3.96 vs 4.13)
    assert result.eval_metrics["bits_per_byte"] < unigram_bits(text.encode()) + 0.25


def test_gradient_accumulation_with_lamb_counts_optimizer_steps(letters_file, tmp_path):
    result = pretrain(
        _options(
            letters_file,
            tmp_path / "run",
            batch_size=2,
            grad_accum=2,
            max_steps=4,
            optimizer="lamb",
            save_every=4,
            eval_every=4,
        ),
        TINY,
    )
    assert result.step == 4
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert state["options"]["grad_accum"] == 2
    # LAMB keeps a step counter per parameter: 4 optimizer steps, not 8 micro-batches.
    optimizer = load_file(str(result.checkpoint / "optimizer.safetensors"))
    steps = {name: value.item() for name, value in optimizer.items() if name.endswith(".step")}
    assert len(steps) == len(list(PerceiverLM(TINY).parameters())) and set(steps.values()) == {4.0}
    assert "encoder.cross.attention.query.weight.step" in steps  # keyed by parameter name: loads into any sharding


@pytest.mark.slow
def test_two_processes_stream_train_and_resume_without_dispatching_from_rank_0(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "part.txt").write_text("\n".join(f"streamed line {i} with a few words" for i in range(3000)))
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "part.txt").write_text("\n".join(f"short stream {i}" for i in range(150)))
    script = tmp_path / "stream_run.py"
    script.write_text(
        "import sys\n"
        "from perceiver_lm import PRESETS\n"
        "from perceiver_lm.training import TrainingOptions, pretrain\n"
        "data, out, steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == 'resume'\n"
        "pretrain(TrainingOptions(dataset=data, streaming=True, output_dir=out, batch_size=4, max_steps=steps, "
        "eval_every=4, eval_windows=4, save_every=4, keep_checkpoints=2, report_to='none', mixed_precision='no', "
        "resume=resume), PRESETS['tiny'])\n"
        "from perceiver_lm.runtime import end_processes\n"
        "end_processes()\n"
    )
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}

    def launch(port, *args):
        done = subprocess.run(
            two_cpu_processes(port, str(script), *map(str, args)),
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    launch(29544, folder, tmp_path / "whole", 8, "fresh")
    # Resume a copy of the run from its step-4 checkpoint: it ends with the same weights.
    (tmp_path / "cut").mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-0000004", tmp_path / "cut" / "checkpoint-0000004")
    launch(29545, folder, tmp_path / "cut", 8, "resume")
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A stream that runs out first: both processes stop together (no one waits for a batch that never comes).
    done = launch(29546, tmp_path / "short", tmp_path / "short_run", 1000, "fresh")
    assert "the stream ended before --max-steps" in done.stderr


def _train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in records if "train_loss" in r]


def test_init_from_continues_the_loss_with_a_fresh_optimizer_and_schedule(letters_file, tmp_path):
    first = pretrain(
        _options(letters_file, tmp_path / "a", max_steps=150, eval_every=150, save_every=150, lr=3e-3), TINY
    )
    # Another seed: a fresh data order and masks, as a user continuing on their own text would get.
    fresh = _options(letters_file, tmp_path / "fresh", max_steps=10, eval_every=10, save_every=10, seed=1)
    scratch = pretrain(fresh, TINY)
    continued = pretrain(dataclasses.replace(fresh, output_dir=str(tmp_path / "b"), init_from=str(tmp_path / "a")))
    # No jump back to the plateau: the continued run scores like the run it started from, far below scratch.
    assert continued.eval_metrics["loss"] < first.eval_metrics["loss"] + 0.15, (continued, first)
    assert scratch.eval_metrics["loss"] > first.eval_metrics["loss"] + 0.8, (scratch, first)
    assert max(_train_losses(tmp_path / "b")) < min(_train_losses(tmp_path / "fresh")) - 0.5
    # A fresh schedule and optimizer: the step count starts at 0 and the moments hold 10 steps, not 160.
    state = json.loads((continued.checkpoint / "trainer_state.json").read_text())
    assert continued.step == 10 and state["step"] == 10
    optimizer = load_file(str(continued.checkpoint / "optimizer.safetensors"))
    assert {float(v) for k, v in optimizer.items() if k.endswith(".step")} == {10.0}
    card = (continued.checkpoint / "README.md").read_text()
    assert str(tmp_path / "a") in card
    # Resuming such a run continues its own checkpoints: the model it started from may be gone by then.
    shutil.rmtree(tmp_path / "a")
    longer = dataclasses.replace(fresh, output_dir=str(tmp_path / "b"), init_from=str(tmp_path / "a"), resume=True)
    assert pretrain(dataclasses.replace(longer, max_steps=14)).step == 14


def test_init_from_refuses_what_is_not_a_masked_lm_of_that_shape(letters_file, tmp_path):
    pretrain(_options(letters_file, tmp_path / "a", max_steps=5, eval_every=5, save_every=5), TINY)
    options = _options(letters_file, tmp_path / "b", init_from=str(tmp_path / "a"))
    with pytest.raises(PerceiverLMError, match=r"--init-from .*differs from the given config \(num_self_layers"):
        pretrain(options, TINY.replace(num_self_layers=3))
    with pytest.raises(PerceiverLMError, match=r"^--init-from .*missing: no such checkpoint"):
        pretrain(dataclasses.replace(options, init_from=str(tmp_path / "missing")))
    from perceiver_lm.config import MultiTaskConfig, TaskSpec
    from perceiver_lm.model import PerceiverClassifier

    classifier = PerceiverClassifier(TINY, MultiTaskConfig((TaskSpec("sst2", 2),), 32))
    classifier.save_pretrained(tmp_path / "classifier")
    with pytest.raises(PerceiverLMError, match=r"^--init-from .*classifier: a fine-tuned task model"):
        pretrain(dataclasses.replace(options, init_from=str(tmp_path / "classifier")))
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").glob("checkpoint-*"))
    # The command line takes the shape from the checkpoint and refuses a preset beside it.
    done = subprocess.run(
        _cli("pretrain", "--init-from", str(tmp_path / "a"), "--preset", "tiny", "--data", str(letters_file)),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--init-from" in done.stderr and "leave out --preset" in done.stderr


def test_compiled_pretraining_follows_the_eager_loss_and_saves_the_plain_model(letters_file, tmp_path):
    eager = pretrain(_options(letters_file, tmp_path / "eager", max_steps=6, eval_every=6, mixed_precision="no"), TINY)
    compiled = pretrain(
        _options(letters_file, tmp_path / "compiled", max_steps=6, eval_every=6, mixed_precision="no", compile=True),
        TINY,
    )

    def losses(run):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["eval_loss"] for r in records if "eval_loss" in r]

    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-3)
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert set(a) == set(b)  # no "_orig_mod." prefix: a compiled run's checkpoint is the plain model
    assert all(torch.allclose(a[k], b[k], atol=1e-3) for k in a)
    assert compiled.step == eager.step == 6
    # Stopped after its first step and resumed, compiled: the uninterrupted compiled run, to fp32 rounding (the
    # resumed process may compile other kernels for a step, e.g. static where the other had gone dynamic).
    short = tmp_path / "short"
    options = _options(letters_file, short, max_steps=6, eval_every=6, mixed_precision="no", compile=True)
    assert pretrain(dataclasses.replace(options, max_minutes=0.0), TINY).step == 1
    assert pretrain(dataclasses.replace(options, resume=True), TINY).step == 6
    c = _weights(short)
    assert all(torch.allclose(b[k], c[k], atol=1e-4) for k in b)
