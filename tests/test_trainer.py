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


def test_pretraining_steps_between_logs_do_no_host_sync(monkeypatch, letters_file, tmp_path):
    # Same run set-up and the same end-of-run work (one log, one evaluation, one checkpoint); only the
    # number of ordinary steps differs, so any per-step sync shows as a difference.
    short = host_syncs(monkeypatch, lambda: pretrain(_options(letters_file, tmp_path / "a", max_steps=3), TINY))
    long = host_syncs(monkeypatch, lambda: pretrain(_options(letters_file, tmp_path / "b", max_steps=9), TINY))
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
