"""Checkpoints under sharded training: torch FSDP2 on 2 CPU processes (gloo) against one process."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from perceiver_lm import PRESETS, PerceiverLM

SCRIPT = REPO / "tests" / "fsdp_script.py"


@pytest.mark.slow
def test_fsdp2_checkpoint_equals_one_process_and_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, str(SCRIPT), "single", str(tmp_path / "single")], env=env, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571"]
    sharded = subprocess.run(
        [*launch, str(SCRIPT), "sharded", str(tmp_path / "sharded")], env=env, capture_output=True, text=True
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    torch.manual_seed(0)
    init = PerceiverLM(PRESETS["tiny"].replace(attention_dropout=0.0)).state_dict()
    for part in ("first", "resumed"):  # the gathered checkpoint, and the run resumed from it
        a = load_file(str(tmp_path / "single" / part / "model.safetensors"))
        b = load_file(str(tmp_path / "sharded" / part / "model.safetensors"))
        assert set(a) == set(b) == set(init)  # every weight, the tied and the query tables too, full-size
        assert all(a[k].shape == b[k].shape == init[k].shape for k in a)
        # The same updates up to float rounding (gradients are averaged across processes in another order).
        moved = sum(((a[k] - init[k]) ** 2).sum() for k in a).sqrt()
        differ = sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt()
        assert moved > 1.0 and differ / moved < 1e-2, (part, float(differ), float(moved))
        states_a = load_file(str(tmp_path / "single" / part / "optimizer.safetensors"))
        states_b = load_file(str(tmp_path / "sharded" / part / "optimizer.safetensors"))
        assert set(states_a) == set(states_b) and any(k.endswith(".exp_avg") for k in states_a)
        for name in states_a:
            torch.testing.assert_close(states_b[name], states_a[name], rtol=1e-3, atol=1e-6)
    steps = load_file(str(tmp_path / "sharded" / "resumed" / "optimizer.safetensors"))
    assert {v.item() for k, v in steps.items() if k.endswith(".step")} == {5.0}  # 3 steps, resumed, 2 more
    model = PerceiverLM.from_pretrained(tmp_path / "sharded" / "resumed")  # loads as any checkpoint does
    reference = PerceiverLM.from_pretrained(tmp_path / "single" / "resumed")
    ids = torch.randint(6, 262, (2, 32), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-2, atol=1e-2)
