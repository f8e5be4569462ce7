"""perceiver-lm: byte-level, tokenizer-free Perceiver IO language models."""

from perceiver_lm.config import PRESETS, PerceiverConfig, get_preset
from perceiver_lm.errors import PerceiverLMError

__all__ = ["PRESETS", "PerceiverConfig", "PerceiverLM", "PerceiverLMError", "PerceiverLMOutput", "get_preset"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The model (and torch) load on first use, so that `perceiver-lm --help` and the options stay light.
    if name in ("PerceiverLM", "PerceiverLMOutput"):
        from perceiver_lm import model

        return getattr(model, name)
    raise AttributeError(f"module 'perceiver_lm' has no attribute {name!r}")
