"""Model cards: every saved model folder says what it is, how it was trained and how to load it."""

from perceiver_lm import PRESETS, PerceiverLM
from perceiver_lm.config import MultiTaskConfig, TaskSpec
from perceiver_lm.model import PerceiverClassifier
from perceiver_lm.training import TrainingOptions, pretrain


def _front_matter(card: str) -> dict[str, str]:
    lines = card.splitlines()
    assert lines[0] == "---"
    end = lines.index("---", 1)
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines[1:end] if not line.startswith("- "))}


def test_a_saved_model_card_names_the_shape_and_how_to_load(tmp_path):
    model = PerceiverLM(PRESETS["tiny"])
    card = (model.save_pretrained(tmp_path / "m") / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "perceiver-lm" and meta["pipeline_tag"] == "fill-mask"
    assert "the `tiny` preset" in card and f"{model.num_parameters():,} parameters" in card
    assert 'PerceiverLM.from_pretrained("path/to/this/folder")' in card
    assert "Not recorded" in card


def test_a_classifier_card_lists_its_tasks(tmp_path):
    heads = MultiTaskConfig((TaskSpec("sst2", 2), TaskSpec("stsb", 1)), 32)
    card = (PerceiverClassifier(PRESETS["tiny"], heads).save_pretrained(tmp_path / "c") / "README.md").read_text()
    assert _front_matter(card)["pipeline_tag"] == "text-classification"
    assert "(sst2, stsb)" in card and "PerceiverClassifier.from_pretrained" in card and "tasks.json" in card


def test_a_training_checkpoint_card_says_how_it_was_trained(letters_file, tmp_path):
    options = TrainingOptions(
        data=[str(letters_file)],
        output_dir=str(tmp_path / "run"),
        batch_size=4,
        max_steps=3,
        eval_every=3,
        eval_windows=4,
        report_to="none",
        mixed_precision="no",
    )
    result = pretrain(options, PRESETS["tiny"])
    card = (result.checkpoint / "README.md").read_text()
    assert f"Pretrained (masked bytes) on: {letters_file}" in card
    assert "Optimizer steps: 3 (" in card and "1 process(es)" in card
    assert "batch_size 4" in card and "mask_unit word" in card
    assert f"bits_per_byte {result.eval_metrics['bits_per_byte']:.4g}" in card
    # The card is part of the checkpoint: resolving and loading it are unaffected.
    assert PerceiverLM.from_pretrained(result.output_dir).config == PRESETS["tiny"]


def test_the_card_is_one_of_our_files_so_a_model_folder_can_be_replaced(tmp_path):
    model = PerceiverLM(PRESETS["tiny"])
    model.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")  # replacing our own folder, card included, is allowed
    assert (tmp_path / "m" / "README.md").is_file()
