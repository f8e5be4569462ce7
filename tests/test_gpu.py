"""GPU paths, run where a CUDA device is present (skipped elsewhere): fused attention kernels accept the
model's masks, a training run keeps its optimizer state and batches where they belong, precision picks."""

import pytest
import torch

from perceiver_lm import PRESETS, PerceiverLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _batch(batch_size, length, device, masked=16):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(6, 262, (batch_size, length), generator=generator)
    positions = torch.stack([torch.randperm(length, generator=generator)[:masked] for _ in range(batch_size)])
    return ids.to(device), positions.to(device), ids.gather(1, positions).to(device)


@pytest.mark.parametrize("preset", ["small", "base"])
def test_the_memory_efficient_kernel_takes_every_attention_of_a_training_step(preset):
    # Forcing the fused kernel makes SDPA refuse ("No available kernel") any call it cannot take, e.g. a mask
    # that is not contiguous along the keys; without the force it would silently fall back to the math kernel.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = PRESETS[preset].replace(num_self_layers=2)
    model = PerceiverLM(config).cuda().train()
    ids, positions, labels = _batch(2, config.max_seq_len, "cuda")
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids, query_positions=positions).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
    loss.backward()
    assert torch.isfinite(loss)


def test_explicit_and_fused_paths_agree_on_the_gpu():
    config = PRESETS["small"].replace(num_self_layers=1)
    model = PerceiverLM(config).cuda().eval()
    ids, positions, _ = _batch(2, 512, "cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fused = model(ids, query_positions=positions).logits.float()
        explicit = model(ids, query_positions=positions, return_attentions=True)
    assert explicit.encoder_attention.dtype == torch.float32
    torch.testing.assert_close(explicit.logits.float(), fused, rtol=0.05, atol=0.05)


def test_auto_precision_on_this_gpu():
    from perceiver_lm.runtime import gpu_has_native_bf16, resolve_precision

    expected = "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"
    assert resolve_precision("auto", cpu=False).mode == expected
    assert gpu_has_native_bf16() == (expected == "bf16")


def test_a_gpu_run_resumes_with_optimizer_state_on_the_gpu(letters_file, tmp_path):
    import perceiver_lm.training as training
    from perceiver_lm.training import TrainingOptions, pretrain

    def options(steps, resume=False):
        return TrainingOptions(
            data=[str(letters_file)],
            output_dir=str(tmp_path / "run"),
            batch_size=8,
            max_steps=steps,
            eval_every=4,
            eval_windows=8,
            save_every=4,
            report_to="none",
            resume=resume,
        )

    first = pretrain(options(4), PRESETS["tiny"])
    assert first.step == 4
    seen = {}
    original = training.fit

    def spy(run, job, state):
        inner = run.optimizer.optimizer
        seen["state"] = {str(v.device) for s in inner.state.values() for v in s.values() if torch.is_tensor(v)}
        seen["batch"] = str(next(iter(run.train_loader))["input_ids"].device)
        return original(run, job, state)

    training.fit = spy
    try:
        second = pretrain(options(8, resume=True), PRESETS["tiny"])
    finally:
        training.fit = original
    assert second.step == 8
    assert seen["state"] == {"cuda:0"}  # fused AdamW keeps its step counters beside the weights
    assert seen["batch"] == "cuda:0"


def test_q_and_k_padded_to_the_value_head_size_let_flash_attention_take_base(monkeypatch):
    # Unequal q/k and v head sizes (32 vs 160 in `base`) rule flash attention out; zero-padding q/k makes it legal.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import perceiver_lm.model as model_module

    monkeypatch.setattr(
        model_module,
        "_pad_for_fused_cpu_kernel",
        lambda q, v, mask, dropout: q.shape[-1] < v.shape[-1] and mask is None,
    )
    config = PRESETS["base"].replace(num_self_layers=2)
    model = PerceiverLM(config).cuda().train()
    ids, positions, labels = _batch(2, config.max_seq_len, "cuda")
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids, query_positions=positions).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
    loss.backward()
    assert torch.isfinite(loss)
