"""The training loop both jobs share: resume, the caller's Accelerator, no host sync per step."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import host_syncs
from perceiver_lm import PRESETS, PerceiverLMError
from perceiver_lm.runtime import make_accelerator
from perceiver_lm.training import TrainingOptions, pretrain

TINY = PRESETS["tiny"]


def _options(data, out, **overrides) -> TrainingOptions:
    base = dict(
        data=[str(data)],
        output_dir=str(out),
        batch_size=4,
        max_steps=6,
        eval_every=1000,
        eval_windows=4,
        save_every=1000,
        log_every=1000,
        warmup_steps=2,
        report_to="none",
        mixed_precision="no",
    )
    return TrainingOptions(**{**base, **overrides})


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_pretraining_steps_between_logs_do_no_host_sync(monkeypatch, letters_file, tmp_path, compile):
    # Same run set-up and the same end-of-run work (one log, one evaluation, one checkpoint); only the
    # number of ordinary steps differs, so any per-step sync shows as a difference.
    def run(out, steps):
        return lambda: pretrain(_options(letters_file, tmp_path / out, max_steps=steps, compile=compile), TINY)

    if compile:
        pretrain(_options(letters_file, tmp_path / "warm", max_steps=9, compile=True), TINY)  # compiles are not steps
    short = host_syncs(monkeypatch, run("a", 3))
    long = host_syncs(monkeypatch, run("b", 9))
    assert short > 0  # the counter sees the syncs that logging and evaluation do
    assert long == short, (short, long)


def test_a_callers_accelerator_is_used_and_checked(letters_file, tmp_path):
    accelerator = make_accelerator(cpu=True, mixed_precision="no")
    result = pretrain(_options(letters_file, tmp_path / "run", max_steps=2), TINY, accelerator=accelerator)
    assert result.step == 2 and result.checkpoint.is_dir()
    with pytest.raises(PerceiverLMError, match="--grad-accum 2, but the Accelerator given accumulates 1"):
        pretrain(_options(letters_file, tmp_path / "other", grad_accum=2), TINY, accelerator=accelerator)


def test_resume_refuses_another_process_count(letters_file, tmp_path):
    out = tmp_path / "run"
    pretrain(_options(letters_file, out, max_steps=2), TINY)
    state_file = next(out.glob("checkpoint-*")) / "trainer_state.json"
    state_file.write_text(state_file.read_text().replace('"num_processes": 1', '"num_processes": 2'))
    with pytest.raises(PerceiverLMError, match="processes 2 -> 1"):
        pretrain(_options(letters_file, out, max_steps=4, resume=True), TINY)


def test_optimizer_state_is_where_the_prepared_optimizer_keeps_it_after_resume(letters_file, tmp_path):
    import perceiver_lm.trainer as trainer

    out = tmp_path / "run"
    pretrain(_options(letters_file, out, max_steps=2, save_every=2), TINY)
    seen = {}
    original = trainer.fit

    def spy(run, job, state):
        opt = run.optimizer.optimizer
        seen["devices"] = {str(v.device) for s in opt.state.values() for v in s.values() if torch.is_tensor(v)}
        seen["dtypes"] = {str(s["step"].dtype) for s in opt.state.values()}
        seen["params"] = {str(p.device) for g in opt.param_groups for p in g["params"]}
        return original(run, job, state)

    trainer.fit = spy  # `train` calls the loop through the module
    try:
        pretrain(_options(letters_file, out, max_steps=4, save_every=2, resume=True), TINY)
    finally:
        trainer.fit = original
    assert seen["devices"] == seen["params"] == {"cpu"}
    assert seen["dtypes"] == {"torch.float32"}
    assert load_file(str(out / "checkpoint-0000004" / "optimizer.safetensors"))


def test_resuming_a_finished_run_trains_no_further(letters_file, tmp_path):
    out = tmp_path / "run"
    pretrain(_options(letters_file, out, max_steps=3, save_every=3), TINY)
    again = pretrain(_options(letters_file, out, max_steps=3, save_every=3, resume=True), TINY)
    assert again.step == 3 and [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-0000003"]


def test_a_callers_accelerator_must_not_sync_with_the_dataloader_when_accumulating(letters_file, tmp_path):
    from accelerate.utils import GradientAccumulationPlugin

    syncing = make_accelerator(cpu=True, gradient_accumulation_steps=2)
    with pytest.raises(PerceiverLMError, match="sync_with_dataloader=False"):
        pretrain(_options(letters_file, tmp_path / "a", grad_accum=2), TINY, accelerator=syncing)
    plugin = GradientAccumulationPlugin(num_steps=2, sync_with_dataloader=False)
    fitting = make_accelerator(cpu=True, gradient_accumulation_plugin=plugin)
    assert (
        pretrain(_options(letters_file, tmp_path / "b", grad_accum=2, max_steps=2), TINY, accelerator=fitting).step == 2
    )


def test_a_model_builds_on_the_meta_device_and_materialises_exactly():
    from perceiver_lm import PerceiverLM

    reference = PerceiverLM(PRESETS["small"])
    with torch.device("meta"):
        model = PerceiverLM(PRESETS["small"])
    assert model.encoder.locality.centres.is_meta
    model = model.to_empty(device="cpu")
    for name in ("centres", "offsets"):
        assert torch.equal(getattr(model.encoder.locality, name), getattr(reference.encoder.locality, name))


# ---- a third job, built as docs/design.md's "A training job" recipe says -------------------------------------


def _third_job_classes():
    import dataclasses
    from pathlib import Path

    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from perceiver_lm.config import MultiTaskConfig, TaskSpec
    from perceiver_lm.model import PerceiverClassifier
    from perceiver_lm.optim import adamw, parameter_groups
    from perceiver_lm.options import option
    from perceiver_lm.tokenizer import encode, pad_batch
    from perceiver_lm.trainer import Data, Schedule

    @dataclasses.dataclass(frozen=True)
    class ZOptions:
        words: Path = option(Path("words.txt"), "Word list; a word's label is whether it holds a z.", data_order=True)
        output_dir: str = option("runs/z", "Run directory.")
        max_steps: int = option(60, "Steps.")
        lr: float = option(2e-3, "Peak learning rate.")
        warmup_steps: int = option(5, "Warm-up.")
        min_lr_ratio: float = option(0.1, "Final rate.")
        clip_norm: float = option(1.0, "Clip.")
        seed: int = option(0, "Seed.", data_order=True)
        log_every: int = option(10, "Log every.")
        eval_every: int = option(30, "Evaluate every.")
        save_every: int = option(30, "Save every.")
        keep_checkpoints: int = option(2, "Keep.")
        batch_size: int = option(16, "Batch.", data_order=True)
        grad_accum: int = option(1, "Accumulation.", data_order=True)
        mixed_precision: str = option("no", "Precision.")
        cpu: bool = option(True, "CPU.")
        resume: bool = option(False, "Resume.")
        overwrite: bool = option(False, "Overwrite.")

    def collate(items):
        batch = pad_batch([encode(w) for w, _ in items])
        labels = torch.tensor([y for _, y in items])
        return {
            "input_ids": torch.from_numpy(batch.input_ids),
            "attention_mask": torch.from_numpy(batch.attention_mask),
            "labels": labels,
        }

    class HasZ:
        name, slots, produced = "has-z", ("z",), ()

        def __init__(self, options):
            self.options = options
            self.accuracies = []

        def accelerator_kwargs(self, output):
            return {}

        def build_model(self, source):
            return PerceiverClassifier(PRESETS["tiny"], MultiTaskConfig((TaskSpec("z", 2),), 32))

        def build_data(self, model, accelerator):
            words = Path(self.options.words).read_text().split()
            items = [(w, int("z" in w)) for w in words]
            train = DataLoader(
                items, batch_size=self.options.batch_size, shuffle=True, drop_last=True, collate_fn=collate
            )
            return Data(
                train, [DataLoader(items[:64], batch_size=32, collate_fn=collate)], "examples", self.options.batch_size
            )

        def build_optimizer(self, model):
            return adamw(parameter_groups(model, 0.0), lr=self.options.lr)

        def schedule(self, batches_per_epoch):
            return Schedule.of(self.options)

        def started(self, run, state, source):
            return "a toy job"

        def loss(self, model, batch):
            logits = model(batch["input_ids"], batch["attention_mask"], task=0).logits
            return F.cross_entropy(logits.float(), batch["labels"]), 0

        def validate(self, run, state, train_loss):
            hits = total = 0
            for batch in run.eval_loaders[0]:
                logits = run.model(batch["input_ids"], batch["attention_mask"], task=0).logits
                hits += int((logits.argmax(-1) == batch["labels"]).sum())
                total += len(batch["labels"])
            self.accuracies.append(hits / total)
            return {"accuracy": hits / total}

        def card(self):
            return [f"- Trained to spot a z in: {self.options.words}"]

    return ZOptions, HasZ


def test_a_third_job_plugs_into_train_and_gets_checkpoints_resume_and_cards(tmp_path):
    import dataclasses
    import random

    from perceiver_lm.trainer import train

    ZOptions, HasZ = _third_job_classes()
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghz" if i % 2 else "abcdefgh") for _ in range(6)) for i in range(400)]
    (tmp_path / "words.txt").write_text(" ".join(words))
    options = ZOptions(words=tmp_path / "words.txt", output_dir=str(tmp_path / "run"))  # a Path option
    job = HasZ(options)
    state = train(options, job)
    assert state.step == 60 and job.accuracies[-1] > 0.8, job.accuracies  # it learned (half the words hold a z)
    card = (tmp_path / "run" / "checkpoint-0000060" / "README.md").read_text()
    assert f"Trained to spot a z in: {tmp_path / 'words.txt'}" in card
    longer = dataclasses.replace(options, max_steps=70, resume=True)
    assert train(longer, HasZ(longer)).step == 70  # resumed from its own checkpoint, Path option and all
    moved = dataclasses.replace(longer, words=tmp_path / "other.txt", max_steps=80)
    with pytest.raises(PerceiverLMError, match=r"cannot resume, --words '.*words\.txt' -> '.*other\.txt'"):
        train(moved, HasZ(moved))
