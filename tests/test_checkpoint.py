import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perceiver_lm import PRESETS, PerceiverLM, PerceiverLMError
from perceiver_lm import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = PerceiverLM(PRESETS["tiny"])
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = PerceiverLM.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not loaded.training


def test_run_directory_resolves_to_latest_checkpoint(tmp_path):
    for step in (5, 20, 10):
        PerceiverLM(PRESETS["tiny"]).save_pretrained(tmp_path / f"checkpoint-{step:07d}")
    (tmp_path / ".checkpoint-0000030.tmp-1").mkdir()  # half-written: must be ignored
    assert ckpt.resolve_model_dir(tmp_path).name == "checkpoint-0000020"


def test_checkpoint_from_a_different_config_is_refused(tmp_path):
    PerceiverLM(PRESETS["tiny"]).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["d_latents"] = 128
    config["v_channels"] = 128
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(PerceiverLMError, match=r"weights do not match the model config \(\d+ shape mismatch"):
        PerceiverLM.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("kind", ["lm", "classifier"])
def test_config_of_a_much_bigger_model_than_its_weights_is_refused_before_building(tmp_path, kind, monkeypatch):
    import perceiver_lm.model
    from perceiver_lm.config import MultiTaskConfig, TaskSpec
    from perceiver_lm.model import PerceiverClassifier, load_any

    tiny = PRESETS["tiny"]
    if kind == "lm":
        PerceiverLM(tiny).save_pretrained(tmp_path / "m")
    else:
        PerceiverClassifier(tiny, MultiTaskConfig((TaskSpec("sst2", 2),))).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["num_self_layers"] = 200  # about 15M parameters beside a file of 0.2M: within MAX_PARAMETERS
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    init = perceiver_lm.model._init_weights

    def only_on_meta(model, config):
        assert all(p.is_meta for p in model.parameters()), "built for real"
        init(model, config)

    monkeypatch.setattr(perceiver_lm.model, "_init_weights", only_on_meta)
    with pytest.raises(PerceiverLMError, match=r"describes a model of [\d,]+ parameters, but model.safetensors holds"):
        load_any(tmp_path / "m")


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(PerceiverLMError, match="no such checkpoint or run directory"):
        PerceiverLM.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PerceiverLMError, match="holds no checkpoint-N directories"):
        PerceiverLM.from_pretrained(tmp_path / "empty")
    PerceiverLM(PRESETS["tiny"]).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(PerceiverLMError, match="unreadable safetensors file"):
        PerceiverLM.from_pretrained(tmp_path / "m")


def test_failed_write_leaves_nothing_and_keeps_the_previous_version(tmp_path):
    target = tmp_path / "checkpoint-0000001"
    PerceiverLM(PRESETS["tiny"]).save_pretrained(target)
    before = (target / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError):
        with ckpt.atomic_directory(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert (target / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-0000001"]


def test_full_disk_gives_one_clear_error(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", no_space)
    with pytest.raises(PerceiverLMError, match="disk full while writing the checkpoint; nothing was written"):
        PerceiverLM(PRESETS["tiny"]).save_pretrained(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    model = PerceiverLM(PRESETS["tiny"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(6, 262, (2, 16))).logits.sum().backward()
    optimizer.step()
    with ckpt.atomic_directory(tmp_path / "c") as tmp:
        ckpt.write_training_files(tmp, optimizer.state_dict(), {"step": 1})
    restored, state = ckpt.read_training_files(tmp_path / "c")
    assert state == {"step": 1}
    original = optimizer.state_dict()
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(restored)
    for key, entry in original["state"].items():
        for name, value in entry.items():
            assert torch.equal(fresh.state_dict()["state"][key][name], value)


def test_the_same_weights_give_the_same_file_bytes_in_every_process(tmp_path):
    # safetensors writes its metadata map in hash order, seeded anew in every process: four processes would
    # otherwise disagree with odds of 7 in 8.
    script = (
        "import sys, torch; from perceiver_lm import PerceiverLM; from perceiver_lm.config import get_preset; "
        "torch.manual_seed(0); PerceiverLM(get_preset('tiny')).save_pretrained(sys.argv[1])"
    )
    for i in range(4):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / str(i))], check=True, cwd=REPO)
    files = {(tmp_path / str(i) / "model.safetensors").read_bytes() for i in range(4)}
    assert len(files) == 1
