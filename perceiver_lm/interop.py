"""Conversion to and from Hugging Face transformers' ``PerceiverForMaskedLM`` (language shape).

Weights move by a fixed name table; nothing is imported from transformers unless a Hub id must be
downloaded or a folder is exported for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from perceiver_lm.checkpoint import (
    atomic_directory,
    check_state_dict,
    resolve_model_dir,
    safetensors_name,
    write_model_files,
)
from perceiver_lm.config import PerceiverConfig, is_transformers_config
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.model import PerceiverLM
from perceiver_lm.run_dir import check_output_folder, refuse_non_empty
from perceiver_lm.tokenizer import VOCAB_SIZE
from perceiver_lm.validation import read_json, shown

# transformers' MLM decoder is built with these fixed values (PerceiverForMaskedLM.__init__).
HF_DECODER_HEADS = 8
HF_DECODER_QK_CHANNELS = 8 * 32

_ATTENTION = {
    "attention.self.layernorm1": "attention.q_norm",
    "attention.self.layernorm2": "attention.kv_norm",
    "attention.self.query": "attention.query",
    "attention.self.key": "attention.key",
    "attention.self.value": "attention.value",
    "attention.output.dense": "attention.out",
    "layernorm": "mlp_norm",
    "mlp.dense1": "mlp.dense1",
    "mlp.dense2": "mlp.dense2",
}


def _block_names(hf_prefix: str, ours_prefix: str, cross: bool) -> dict[str, str]:
    names = {}
    for hf, ours in _ATTENTION.items():
        if hf.endswith("layernorm2") and not cross:
            continue
        for leaf in ("weight", "bias"):
            names[f"{hf_prefix}.{hf}.{leaf}"] = f"{ours_prefix}.{ours}.{leaf}"
    return names


def name_table(config: PerceiverConfig) -> dict[str, str]:
    """transformers parameter name -> ours, for a config of the public language shape."""
    table = {
        "perceiver.input_preprocessor.embeddings.weight": "encoder.token_embedding.weight",
        "perceiver.input_preprocessor.position_embeddings.weight": "encoder.position_embedding.weight",
        "perceiver.embeddings.latents": "encoder.latents",
        "perceiver.decoder.output_position_encodings.position_embeddings": "decoder.queries.embedding.weight",
        "embedding_decoder.bias": "output_bias",
    }
    table |= _block_names("perceiver.encoder.cross_attention", "encoder.cross", cross=True)
    for i in range(config.num_self_layers):
        table |= _block_names(f"perceiver.encoder.self_attends.{i}", f"encoder.layers.{i}", cross=False)
    table |= _block_names("perceiver.decoder.decoding_cross_attention", "decoder.cross", cross=True)
    return table


def config_from_transformers(hf: dict[str, Any], source: str) -> PerceiverConfig:
    """Map a transformers ``PerceiverConfig`` dict of the language shape to ours, or refuse by field."""
    if not isinstance(hf, dict):
        raise PerceiverLMError(f"{source}: not a transformers config (expected a JSON object, got {shown(hf)})")
    try:
        return _config_from_transformers(hf, source)
    except PerceiverLMError as err:
        raise PerceiverLMError(
            str(err) if str(err).startswith(source) else f"{source}: cannot convert: {err}"
        ) from None


def _config_from_transformers(hf: dict[str, Any], source: str) -> PerceiverConfig:

    def need(field: str, ok: bool, expected: str) -> None:
        if not ok:
            raise PerceiverLMError(f"{source}: cannot convert: {field}={hf.get(field)!r}, expected {expected}")

    need("num_blocks", hf.get("num_blocks", 1) == 1, "1 (weight-shared processor blocks are not supported)")
    need("hidden_act", hf.get("hidden_act", "gelu") == "gelu", "'gelu'")
    need("use_query_residual", hf.get("use_query_residual", True) is True, "true")
    need("vocab_size", hf.get("vocab_size", VOCAB_SIZE) == VOCAB_SIZE, f"{VOCAB_SIZE} (the byte vocabulary)")
    d_model, d_latents = hf.get("d_model", 768), hf.get("d_latents", 1280)
    shape = hf.get("cross_attention_shape_for_attention", "kv")
    cross_qk = hf.get("qk_channels") or (d_model if shape == "kv" else d_latents)
    self_qk = hf.get("qk_channels") or d_latents
    need(
        "qk_channels",
        cross_qk == self_qk,
        "a value (or defaults) giving encoder and processor the same query/key width",
    )
    cross_v, self_v = hf.get("v_channels") or cross_qk, hf.get("v_channels") or self_qk
    need("v_channels", cross_v == self_v, "a value (or defaults) giving encoder and processor the same value width")
    return PerceiverConfig(
        vocab_size=VOCAB_SIZE,
        max_seq_len=hf.get("max_position_embeddings", 2048),
        d_model=d_model,
        num_latents=hf.get("num_latents", 256),
        d_latents=d_latents,
        num_cross_heads=hf.get("num_cross_attention_heads", 8),
        num_self_heads=hf.get("num_self_attention_heads", 8),
        qk_channels=cross_qk,
        v_channels=cross_v,
        num_self_layers=hf.get("num_self_attends_per_block", 26),
        cross_widening=hf.get("cross_attention_widening_factor", 1),
        self_widening=hf.get("self_attention_widening_factor", 1),
        decoder_heads=HF_DECODER_HEADS,
        decoder_qk_channels=HF_DECODER_QK_CHANNELS,
        decoder_v_channels=d_model,
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=1e-5,  # transformers builds nn.LayerNorm(dim) and ignores its config's layer_norm_eps
        init_std=hf.get("initializer_range", 0.02),
        locality_bias=False,
        tie_decoder_queries=False,
    )


def config_to_transformers(config: PerceiverConfig) -> dict[str, Any]:
    """Our config as a transformers ``PerceiverConfig`` dict; refuses what transformers cannot express."""
    problems = []
    if config.locality_bias or config.tie_decoder_queries or config.span_queries:
        problems.append("locality_bias/tie_decoder_queries/span_queries must be off")
    if config.byte_encoder != "none":
        problems.append(f"byte_encoder must be none (transformers has no {config.byte_encoder!r} byte encoder)")
    if (config.decoder_heads, config.decoder_qk_channels, config.decoder_v_channels) != (
        HF_DECODER_HEADS,
        HF_DECODER_QK_CHANNELS,
        config.d_model,
    ):
        problems.append(
            f"decoder must have {HF_DECODER_HEADS} heads, {HF_DECODER_QK_CHANNELS} qk channels and d_model value "
            "channels"
        )
    if config.vocab_size != VOCAB_SIZE:
        problems.append(f"vocab_size must be {VOCAB_SIZE}")
    if config.layer_norm_eps != 1e-5:
        problems.append("layer_norm_eps must be 1e-5 (transformers' LayerNorms use the default)")
    if problems:
        raise PerceiverLMError(f"cannot export to transformers: {'; '.join(problems)}")
    return {
        "model_type": "perceiver",
        "architectures": ["PerceiverForMaskedLM"],
        "num_latents": config.num_latents,
        "d_latents": config.d_latents,
        "d_model": config.d_model,
        "num_blocks": 1,
        "num_self_attends_per_block": config.num_self_layers,
        "num_self_attention_heads": config.num_self_heads,
        "num_cross_attention_heads": config.num_cross_heads,
        "qk_channels": config.qk_channels,
        "v_channels": config.v_channels,
        "cross_attention_shape_for_attention": "kv",
        "self_attention_widening_factor": config.self_widening,
        "cross_attention_widening_factor": config.cross_widening,
        "hidden_act": "gelu",
        "attention_probs_dropout_prob": config.attention_dropout,
        "initializer_range": config.init_std,
        "layer_norm_eps": config.layer_norm_eps,
        "use_query_residual": True,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
    }


def _read_transformers_weights(directory: Path) -> dict[str, torch.Tensor]:
    safetensors_file = directory / "model.safetensors"
    bin_file = directory / "pytorch_model.bin"
    if safetensors_file.is_file():
        try:
            with safetensors_name(safetensors_file) as name:
                return load_file(name)
        except SafetensorError as err:
            raise PerceiverLMError(f"{safetensors_file}: unreadable safetensors file ({err})") from None
    if not bin_file.is_file():
        raise PerceiverLMError(f"{directory}: no model.safetensors or pytorch_model.bin")
    try:
        # weights_only: the restricted unpickler that refuses arbitrary code.
        weights = torch.load(bin_file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises UnpicklingError, RuntimeError, EOFError, ... for a bad file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PerceiverLMError(f"{bin_file}: not a weights-only PyTorch state dict ({first[:200]})") from None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise PerceiverLMError(f"{bin_file}: not a state dict of tensors")
    return weights


def _locate(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists() or source.count("/") != 1:
        raise PerceiverLMError(
            f"{source}: not a folder with a transformers checkpoint (or a Hub id like deepmind/language-perceiver)"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin"]))
    except Exception as err:  # offline, unknown repo, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PerceiverLMError(f"{source}: cannot download from the Hub: {first}") from None


def is_transformers_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a transformers Perceiver checkpoint (`is_transformers_config`)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    return is_transformers_config(read_json(config, "transformers config"))


def load_from_transformers(source: str | Path) -> PerceiverLM:
    """Build our model from a transformers ``PerceiverForMaskedLM`` folder or Hub id."""
    directory = _locate(str(source))
    config = config_from_transformers(
        read_json(directory / "config.json", "transformers config"), str(directory / "config.json")
    )
    weights = _read_transformers_weights(directory)
    table = name_table(config)
    missing = sorted(set(table) - set(weights))
    if missing:
        raise PerceiverLMError(
            f"{directory}: not a PerceiverForMaskedLM language checkpoint ({len(missing)} weights missing, e.g. "
            f"{missing[0]})"
        )
    state = {ours: weights[hf] for hf, ours in table.items()}
    model = PerceiverLM(config)
    check_state_dict(model, state, str(directory))
    model.load_state_dict(state)
    return model.eval()


def check_convert_output(out: str | Path, sources: list[str | Path], overwrite: bool) -> Path:
    """Refuse an output folder that is a file, that is (or holds) one of ``sources``, or that holds
    files while ``overwrite`` is off; returns it."""
    out = check_output_folder(out, "OUT")
    for source in sources:
        source = Path(source)
        if source.exists() and (out.resolve() == source.resolve() or out.resolve() in source.resolve().parents):
            raise PerceiverLMError(
                f"OUT {out}: is (or holds) the source {source}; writing there would replace it, pick another folder"
            )
    if not overwrite:
        refuse_non_empty(out, "OUT", "pass --overwrite to replace an earlier conversion there, or pick another folder")
    return out


def convert_from_transformers(source: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Convert a transformers checkpoint into a perceiver-lm checkpoint folder (atomically).

    An existing ``out`` is replaced only with ``overwrite``, and only when it holds nothing but a checkpoint of ours.
    """
    out = check_convert_output(out, [source], overwrite)
    model = load_from_transformers(source)
    with atomic_directory(out) as tmp:
        write_model_files(model, model.config, tmp, {"source": f"converted from the transformers checkpoint {source}"})
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Export a perceiver-lm checkpoint or run directory for transformers (see `export_to_transformers`),
    never over the checkpoint itself."""
    directory = resolve_model_dir(checkpoint)
    check_convert_output(out, [checkpoint, directory], overwrite)
    return export_to_transformers(PerceiverLM.from_pretrained(directory), out)


def export_to_transformers(model: PerceiverLM, out: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``PerceiverForMaskedLM.from_pretrained`` loads."""
    hf_config = config_to_transformers(model.config)
    ours = model.state_dict()
    tensors = {hf: ours[name].detach().contiguous().cpu() for hf, name in name_table(model.config).items()}
    with atomic_directory(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return Path(out)
