"""perceiver-lm: byte-level, tokenizer-free Perceiver IO language models."""

from perceiver_lm.config import PRESETS, PerceiverConfig, get_preset
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.model import PerceiverLM, PerceiverLMOutput

__all__ = ["PRESETS", "PerceiverConfig", "PerceiverLM", "PerceiverLMError", "PerceiverLMOutput", "get_preset"]
__version__ = "0.1.0"
