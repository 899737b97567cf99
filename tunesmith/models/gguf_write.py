"""Write a Hugging Face model folder as a GGUF file for llama.cpp and Ollama (the reverse of `models/gguf.py`).

The maintained pieces do most of the work: the `gguf` package (gguf-py) writes the file (`GGUFWriter`), maps
Hugging Face tensor names to GGUF ones (`get_tensor_name_map`), quantises to Q8_0 (`gguf.quants.quantize`) and reads
a tokenizer folder's special tokens, merges and chat template (`gguf.SpecialVocab`); llama.cpp itself makes the
k-quants (`quantize_gguf`, through llama-cpp-python's binding of `llama_model_quantize`). What neither package offers
is written here, and kept small:

* the architecture's hyper-parameters as GGUF keys, and which HF architectures map to which llama.cpp one;
* the two weight layout changes llama.cpp expects (`_ARCHES`): the Llama graph rotates interleaved pairs of a head
  while HF rotates its two halves, so q/k rows are reordered; Gemma's RMSNorm multiplies by (1 + w), llama.cpp's by w;
* the token list (`_vocab`). gguf-py's vocab classes are not usable here: `BpeVocab` marks special tokens that live
  inside the base vocabulary (SmolLM2's `<|im_start|>`) as normal text, so llama.cpp would split them, and
  `LlamaHfVocab` gives every SentencePiece-style token the same placeholder score, while llama.cpp's SPM tokenizer
  merges by score. Scores are therefore derived from the BPE merge ranks;
* the pre-tokenizer name llama.cpp keys its split regex on, recognised from tokenizer.json's own pre-tokenizer.

Library code: nothing here prints. Errors the user can fix are `ConfigError` / `ModelError`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, ModelError

log = logging.getLogger(__name__)

__all__ = ["GGUF_TYPES", "K_QUANTS", "SUPPORTED_ARCHITECTURES", "check_gguf_type", "hf_folder_to_gguf",
           "quantize_gguf", "check_architecture"]

#: Types written by gguf-py directly.
DIRECT_TYPES = ("f32", "f16", "q8_0")
#: k-quants, made by llama.cpp's own quantizer from an f16 file: name -> llama_ftype value (llama.h).
K_QUANTS = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
GGUF_TYPES = DIRECT_TYPES + tuple(K_QUANTS)


@dataclass(frozen=True)
class _Arch:
    gguf_name: str  # gguf.MODEL_ARCH member name
    permute_qk: bool  # llama.cpp's Llama graph uses interleaved ("normal") RoPE; HF rotates half-vectors
    norm_plus_one: bool  # Gemma's RMSNorm scales by (1 + weight)


_ARCHES = {
    "LlamaForCausalLM": _Arch("LLAMA", permute_qk=True, norm_plus_one=False),
    # Mistral runs as llama.cpp's Llama graph (same weights); its sliding window is not applied there, which only
    # matters beyond `sliding_window` tokens of context.
    "MistralForCausalLM": _Arch("LLAMA", permute_qk=True, norm_plus_one=False),
    "Qwen2ForCausalLM": _Arch("QWEN2", permute_qk=False, norm_plus_one=False),
    "GemmaForCausalLM": _Arch("GEMMA", permute_qk=False, norm_plus_one=True),
}
SUPPORTED_ARCHITECTURES = tuple(_ARCHES)

# The pre-tokenizer regexes of Llama 3 and Qwen2 tokenizer.json files, and the llama.cpp names for them.
_SPLIT_REGEXES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}


def check_gguf_type(kind: str) -> str:
    kind = str(kind).lower()
    if kind not in GGUF_TYPES:
        raise ConfigError(f"unknown GGUF type '{kind}'", where="--gguf",
                          hint=f"choose one of: {', '.join(GGUF_TYPES)}")
    return kind


def check_architecture(config: dict) -> _Arch:
    """The llama.cpp architecture for a HF config.json (as a dict); a clear error for the others."""
    archs = config.get("architectures") or []
    name = archs[0] if archs else config.get("model_type", "?")
    if name not in _ARCHES:
        raise ConfigError(f"GGUF export does not support the architecture {name}",
                          hint=f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}; export a Hugging Face folder "
                               "instead (without --gguf)")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", "llama3"):
        raise ConfigError(f"GGUF export does not support rope_type '{rope.get('rope_type')}'",
                          hint="only unscaled RoPE and Llama 3 scaling are written")
    return _ARCHES[name]


def _rope_parameters(config: dict) -> dict:
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope["type"]
    return rope


def hf_folder_to_gguf(folder: Path, out_file: Path, kind: str, *, chat_template: str | None = None,
                      name: str | None = None, on_tensor: Callable[[str], None] | None = None,
                      notes: list[str] | None = None) -> Path:
    """Write the HF model folder `folder` (config.json, safetensors, tokenizer) as `out_file` in `kind`
    (f32, f16 or q8_0; k-quants go through `quantize_gguf` from an f16 file). `chat_template` replaces the
    tokenizer's own; `on_tensor(name)` is called once per tensor written; `notes` gets what the user should know
    (a tokenizer rule llama.cpp does not apply)."""
    import gguf

    folder, out_file = Path(folder), Path(out_file)
    kind = check_gguf_type(kind)
    if kind not in DIRECT_TYPES:
        raise ValueError(f"{kind} is made by quantize_gguf from an f16 file")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = check_architecture(config)
    model_arch = getattr(gguf.MODEL_ARCH, arch.gguf_name)
    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[model_arch])
    try:
        _write_hparams(writer, config, kind, name or folder.name)
        _write_vocab(writer, folder, config, chat_template, notes if notes is not None else [])
        _write_tensors(writer, folder, config, arch, model_arch, kind, on_tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out_file


# ----------------------------------------------------------------------------------------- hyper-parameters

def _write_hparams(writer, config: dict, kind: str, name: str) -> None:
    import gguf

    hidden, n_head = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // n_head
    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_rope_freq_base(float(_rope_parameters(config)["rope_theta"]))
    writer.add_vocab_size(config["vocab_size"])
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]
    writer.add_file_type(file_type)
    if kind == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# ------------------------------------------------------------------------------------------------- tensors

def _unrotate(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from HF's half-split RoPE layout to the interleaved pairs llama.cpp rotates."""
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _tensor_type(kind: str, array: np.ndarray):
    import gguf

    if kind == "f32" or array.ndim < 2:
        return gguf.GGMLQuantizationType.F32
    if kind == "q8_0" and array.shape[-1] % 32 == 0:  # Q8_0 blocks hold 32 values of a row
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def _llama3_rope_factors(config: dict) -> np.ndarray:
    """Per-frequency divisors for Llama 3 RoPE scaling (the `rope_freqs` tensor), from transformers' own formula."""
    import torch
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = AutoConfig.for_model(**config)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, torch.device("cpu"))
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    theta = float(_rope_parameters(config)["rope_theta"])
    plain = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    return (plain / scaled.float()).numpy().astype(np.float32)


def _write_tensors(writer, folder: Path, config: dict, arch: _Arch, model_arch, kind: str, on_tensor) -> None:
    import gguf
    from safetensors import safe_open

    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    names = gguf.get_tensor_name_map(model_arch, config["num_hidden_layers"])
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"no safetensors weights in {folder}")
    tied = bool(config.get("tie_word_embeddings", False))
    if _rope_parameters(config).get("rope_type") == "llama3":
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _llama3_rope_factors(config))
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
                    continue
                target = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if target is None:
                    raise ModelError(f"GGUF export cannot place the tensor {key} of {file.name}",
                                     hint="the model has weights the llama.cpp architecture does not know")
                array = f.get_tensor(key).float().numpy()
                if arch.permute_qk and key.endswith(("q_proj.weight", "q_proj.bias")):
                    array = _unrotate(array, n_head)
                elif arch.permute_qk and key.endswith(("k_proj.weight", "k_proj.bias")):
                    array = _unrotate(array, n_kv)
                if arch.norm_plus_one and key.endswith("norm.weight"):
                    array = array + 1.0
                qtype = _tensor_type(kind, array)
                data = gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)
                writer.add_tensor(target, data, raw_shape=data.shape if qtype == gguf.GGMLQuantizationType.Q8_0
                                  else None, raw_dtype=qtype if qtype == gguf.GGMLQuantizationType.Q8_0 else None)
                if on_tensor is not None:
                    on_tensor(target)


# --------------------------------------------------------------------------------------------- tokenizer

def _write_vocab(writer, folder: Path, config: dict, chat_template: str | None, notes: list[str]) -> None:
    import gguf

    tok_file = folder / "tokenizer.json"
    if not tok_file.is_file():
        raise ModelError(f"GGUF export needs a fast tokenizer (tokenizer.json) in {folder}")
    data = json.loads(tok_file.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ConfigError(f"GGUF export does not support a {model.get('type')} tokenizer",
                          hint="supported: byte-level BPE (GPT-2 style) and SentencePiece-style BPE with byte fallback")
    spm = bool(model.get("byte_fallback"))
    tokens, scores, types = _vocab(data, config["vocab_size"], spm)
    if spm and (rules := _unapplied_normalizers(data)):
        notes.append(f"llama.cpp does not apply the tokenizer's normalizer rules ({', '.join(rules)}): text they would "
                     "change (e.g. runs of spaces) is tokenised differently there")
    if spm:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_add_space_prefix(_adds_space_prefix(data))
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer(data))
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    vocab_log = logging.getLogger("gguf.vocab")
    level = vocab_log.level
    vocab_log.setLevel(logging.ERROR)  # its notes on pair templates (sentence pairs) do not concern a chat model
    try:
        special = gguf.SpecialVocab(folder, load_merges=not spm, n_vocab=len(tokens))
    finally:
        vocab_log.setLevel(level)
    if chat_template is not None:
        special.chat_template = chat_template
    special.add_to_gguf(writer, quiet=True)


def _vocab(data: dict, n_vocab: int, spm: bool) -> tuple[list[str], list[float], list[int]]:
    import gguf

    by_id: dict[int, str] = {i: t for t, i in data["model"]["vocab"].items()}
    kinds: dict[int, int] = {}
    for added in data.get("added_tokens") or []:
        by_id[added["id"]] = added["content"]
        kinds[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    if max(by_id) >= n_vocab:
        raise ModelError(f"the tokenizer has ids up to {max(by_id)} but the model only {n_vocab} embeddings")
    # SentencePiece-style BPE: llama.cpp merges the adjacent pair whose joined piece scores highest, while the HF
    # tokenizer applies merges by rank; scoring each piece minus the rank of the merge that makes it gives the order.
    rank: dict[str, int] = {}
    if spm:
        for i, merge in enumerate(data["model"].get("merges") or []):
            left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
            rank.setdefault(left + right, i)
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            scores.append(-1e9)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(text)
        if i in kinds:
            types.append(kinds[i])
            scores.append(0.0)
        elif spm and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            types.append(gguf.TokenType.BYTE)
            scores.append(0.0)
        else:
            types.append(gguf.TokenType.NORMAL)
            scores.append(-float(rank[text]) if text in rank else (0.0 if len(text) == 1 else -1e6))
    return tokens, scores, types


def _walk(node, keys=("pretokenizers", "normalizers")):
    if isinstance(node, dict):
        yield node
        for key in keys:
            for child in node.get(key) or []:
                yield from _walk(child, keys)


def _unapplied_normalizers(data: dict) -> list[str]:
    """Normalizer rules of a SentencePiece-style tokenizer beyond the '▁' handling that llama.cpp does itself."""
    rules = []
    for node in _walk(data.get("normalizer")):
        kind = node.get("type")
        if kind in (None, "Sequence", "Prepend"):
            continue
        if kind == "Replace" and node.get("pattern") == {"String": " "} and node.get("content") == "\u2581":
            continue
        pattern = (node.get("pattern") or {})
        rules.append(f"{kind} {pattern.get('Regex') or pattern.get('String')!r}" if pattern else kind)
    return rules


def _adds_space_prefix(data: dict) -> bool:
    """Whether a SentencePiece-style tokenizer puts '▁' before the text (Metaspace or a Prepend normalizer)."""
    for node in _walk(data.get("pre_tokenizer")):
        if node.get("type") == "Metaspace":
            return node.get("prepend_scheme", "always") != "never" and node.get("add_prefix_space", True)
    return any(node.get("type") == "Prepend" for node in _walk(data.get("normalizer")))


def _pre_tokenizer(data: dict) -> str:
    """llama.cpp's name for a byte-level BPE tokenizer's split rule; an error for one it would split differently."""
    pre = data.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex in _SPLIT_REGEXES:
            return _SPLIT_REGEXES[regex]
    raise ConfigError(f"GGUF export does not recognise this tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))})",
                      hint="llama.cpp would split text differently from the model's own tokenizer")


# ------------------------------------------------------------------------------------------------ k-quants

def quantize_gguf(src: Path, dst: Path, kind: str, *, threads: int = 0) -> Path:
    """Quantise the f16/f32 GGUF `src` to the k-quant `kind` with llama.cpp's own quantizer (llama-cpp-python)."""
    kind = check_gguf_type(kind)
    if kind not in K_QUANTS:
        raise ValueError(f"{kind} is written directly, not by llama.cpp's quantizer")
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError(f"--gguf {kind} needs llama.cpp's quantizer, from the llama-cpp-python package",
                          hint="pip install llama-cpp-python (it compiles llama.cpp, a few minutes), or choose "
                               "f16 / q8_0, which need nothing else") from None
    import ctypes

    from llama_cpp import _logger

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = K_QUANTS[kind]
    params.nthread = threads
    lines: list[str] = []

    # llama.cpp logs a line per tensor to stderr, and llama-cpp-python's own filter lets warnings through (its level
    # table predates ggml's current one), so the log is taken here for the call: library code does not print.
    @llama_cpp.llama_log_callback
    def keep(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        code = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    for line in "".join(lines).splitlines():
        if "fallback" in line:
            log.info("llama.cpp quantize: %s", line.strip())
    if code != 0:
        raise ModelError(f"llama.cpp could not quantise {src.name} to {kind} (code {code})")
    return dst
