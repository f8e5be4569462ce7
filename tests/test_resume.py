"""Resume rules: which option changes a resumed run refuses, read from the options' ``data_order`` markers."""

import copy
import typing

import pytest

from perceiver_lm import PRESETS, PerceiverLM, PerceiverLMError
from perceiver_lm.options import TrainingOptions, data_order_fields, flag
from perceiver_lm.resume import check_resume, resume_source
from perceiver_lm.training import pretrain
from tasks.finetune.options import GlueOptions


def _changed(options, name, other_file=None):
    """A copy of ``options`` with field ``name`` set to another value of its type (validation bypassed:
    the check reads the values, and some changes are only valid together with others); a list of files
    gets ``other_file`` added."""
    value = getattr(options, name)
    hint = typing.get_type_hints(type(options))[name]
    if other_file is not None and isinstance(value, list):
        new = [*value, str(other_file)]
    elif typing.get_origin(hint) is typing.Literal:
        new = next(c for c in typing.get_args(hint) if c != value)
    elif isinstance(value, bool):
        new = not value
    elif isinstance(value, int):
        new = value + 1
    elif isinstance(value, float):
        new = value / 2
    elif isinstance(value, list):
        new = [*value, "other"]
    else:  # a string, or an unset optional one
        new = f"{value}-other" if value is not None else ("other" if str in typing.get_args(hint) else 7)
    copied = copy.copy(options)
    object.__setattr__(copied, name, new)
    return copied, new


def test_every_field_marked_data_order_is_refused_on_resume_and_others_are_not(letters_file, tmp_path):
    options = TrainingOptions(
        data=[str(letters_file)],
        output_dir=str(tmp_path / "run"),
        batch_size=4,
        max_steps=2,
        eval_windows=4,
        report_to="none",
        mixed_precision="no",
    )
    pretrain(options, PRESETS["tiny"])
    source = resume_source(tmp_path / "run", True)
    model = PerceiverLM(PRESETS["tiny"])
    check_resume(source, model, options, 1)  # the same options continue
    marked = data_order_fields(TrainingOptions)
    assert {"batch_size", "seed", "data", "mask_rate", "init_from"} <= set(marked)
    other = tmp_path / "other.txt"
    other.write_text("more text to read " * 20)
    for name in marked:
        changed, new = _changed(options, name, other)
        with pytest.raises(PerceiverLMError, match=f"cannot resume, {flag(name)} "):
            check_resume(source, model, changed, 1)
    for name in ("lr", "max_steps", "eval_every", "keep_checkpoints"):  # not marked: a resumed run may change them
        check_resume(source, model, _changed(options, name)[0], 1)
    # Files are known by what they hold: another spelling of the same file continues, an edit is refused.
    respelt = copy.copy(options)
    object.__setattr__(respelt, "data", [f"{letters_file.parent}/./{letters_file.name}"])
    check_resume(source, model, respelt, 1)
    text = letters_file.read_bytes()
    letters_file.write_bytes(text[:100] + bytes([text[100] ^ 1]) + text[101:])  # the same size, one byte changed
    with pytest.raises(PerceiverLMError, match="cannot resume, --data .*: its files hold other data"):
        check_resume(source, model, options, 1)
    letters_file.write_bytes(text)
    # A job may add fields that fix its order only in some runs (a stream's --eval-windows).
    with pytest.raises(PerceiverLMError, match="--eval-windows 4 -> 5"):
        check_resume(source, model, _changed(options, "eval_windows")[0], 1, also=("eval_windows",))


def test_the_markers_are_the_fields_each_job_documents_as_fixing_its_order():
    assert data_order_fields(TrainingOptions) == (
        "data",
        "dataset",
        "dataset_config",
        "dataset_split",
        "text_column",
        "streaming",
        "val_data",
        "val_fraction",
        "init_from",
        "window",
        "batch_size",
        "grad_accum",
        "mask_rate",
        "mask_unit",
        "seed",
    )
    glue = set(data_order_fields(GlueOptions))
    assert {"tasks", "checkpoint", "batch_size", "seed", "max_eval_examples", "body_lr_scale"} <= glue
    assert not glue & {"lr", "epochs", "max_steps", "eval_every", "output_dir", "resume", "overwrite"}
