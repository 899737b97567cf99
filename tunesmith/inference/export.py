"""Export a run as a standalone Hugging Face model (adapter merged into the base weights), or as a GGUF file for
llama.cpp with an Ollama Modelfile beside it (the same merged model, converted)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, TunesmithError
from ..io import atomic_write_json, check_writable, staged_dir
from ..models.loading import RUN_META, load_for_inference, load_run_tokenizer, read_run_meta
from ..reporting import Reporter, reporter_or_default

log = logging.getLogger(__name__)


# A run folder's working files, not part of the artifact.
NOT_EXPORTED = ("checkpoints", "tensorboard")


def export_run(run_dir: str, out_dir: str, *, merge: bool = True, dtype: str = "float32",
               trust_remote_code: bool = False) -> Path:
    """`trust_remote_code`: the user's own permission for code in the run's folder (the run cannot grant it)."""
    meta = _run_meta(run_dir)
    out = _empty_out(out_dir)  # before any model loads
    with staged_dir(out) as staging:
        if meta["artifact"] != "full" and not merge:  # the adapter as it is (with a hybrid's part folders)
            for item in Path(run_dir).iterdir():
                if item.is_file():
                    shutil.copy2(item, staging / item.name)
                elif item.is_dir() and item.name not in NOT_EXPORTED:
                    shutil.copytree(item, staging / item.name)
        else:
            # A QLoRA adapter is merged into the full-precision base: merging into 4-bit weights would re-quantise
            # the update away.
            loaded = load_for_inference(run_dir, dtype=dtype, trust_remote_code=trust_remote_code)
            if meta["artifact"] != "full" and not hasattr(loaded.model, "merge_and_unload"):
                raise TunesmithError(f"a {meta['method']['name']} run cannot be merged into the base weights",
                                     hint="export without --merge to copy the adapter as it is (it reloads with "
                                          "tunesmith: tunesmith chat/generate/serve take the copy)")
            model = loaded.model.merge_and_unload() if meta["artifact"] != "full" else loaded.model
            model = model.to(getattr(torch, dtype))
            model.save_pretrained(staging)
            loaded.tokenizer.save_pretrained(staging)
            atomic_write_json(staging / RUN_META, {**meta, "artifact": "full", "merged_from": str(run_dir)})
    return out


def _run_meta(run_dir: str | Path) -> dict:
    if not Path(run_dir).exists():
        raise TunesmithError(f"run folder not found: {run_dir}", hint="give the folder a training run wrote")
    meta = read_run_meta(run_dir) if Path(run_dir).is_dir() else None
    if meta is None:
        raise TunesmithError(f"{run_dir} is not a tunesmith run folder (no {RUN_META})")
    return meta


def _empty_out(out_dir: str | Path) -> Path:
    out = check_writable(out_dir, "--out", folder=True)
    if any(item for item in out.iterdir() if not item.name.startswith(".staging-")):
        raise TunesmithError(f"{out} exists and is not empty", hint="choose a new --out folder")
    return out


@dataclass
class GGUFExport:
    gguf: Path  # the model file
    modelfile: Path  # Ollama's Modelfile beside it
    template_note: str | None  # why the Modelfile has no TEMPLATE, when it has none


def export_gguf(run_dir: str | Path, out_dir: str | Path, kind: str = "f16", *, trust_remote_code: bool = False,
                reporter: Reporter | None = None) -> GGUFExport:
    """Merge the run (as `export_run` does), convert it to a GGUF file of type `kind` (`GGUF_TYPES`: f16, q8_0,
    q4_k_m, ...) with the run's tokenizer and chat template, and write an Ollama Modelfile beside it."""
    from ..models.gguf_write import K_QUANTS, check_gguf_type, hf_folder_to_gguf, quantize_gguf

    reporter = reporter_or_default(reporter)
    kind = check_gguf_type(kind)
    meta = _run_meta(run_dir)
    if meta["artifact"] not in ("full", "adapter"):
        raise ConfigError(f"a {meta['method']['name']} run cannot be merged into the base weights, so it has no "
                          "GGUF form", where="--gguf", hint="export it without --gguf")
    _check_architecture_early(run_dir, meta)
    out = _empty_out(out_dir)
    name = Path(run_dir).resolve().name
    gguf_name = f"{name}-{kind}.gguf"
    with staged_dir(out) as staging:
        merged = staging / ".merged"
        with reporter.status("merging the run into the base weights"):
            export_run(str(run_dir), str(merged), merge=True, dtype="float32", trust_remote_code=trust_remote_code)
        tokenizer = load_run_tokenizer(merged)
        from ..data.templates.registry import get_template

        template = get_template(meta.get("template") or "auto", tokenizer)
        direct = "f16" if kind in K_QUANTS else kind
        first = staging / (f".{name}-f16.gguf" if kind in K_QUANTS else gguf_name)
        total, notes = _count_tensors(merged), []
        with reporter.progress(f"writing {first.name.lstrip('.')}", total) as advance:
            hf_folder_to_gguf(merged, first, direct, chat_template=template.jinja(), name=name,
                              on_tensor=lambda tensor: advance(1, tensor), notes=notes)
        for note in notes:
            reporter.warning(note)
        if kind in K_QUANTS:
            with reporter.status(f"quantising to {kind} with llama.cpp"):
                quantize_gguf(first, staging / gguf_name, kind)
            first.unlink()
        text, note = _modelfile_text(merged, gguf_name, template, tokenizer)
        (staging / "Modelfile").write_text(text, encoding="utf-8")
        shutil.rmtree(merged)
    if note:
        reporter.warning(f"the Modelfile has no TEMPLATE: {note}; Ollama will use the GGUF's own chat template")
    return GGUFExport(out / gguf_name, out / "Modelfile", note)


def _check_architecture_early(run_dir: str | Path, meta: dict) -> None:
    """Refuse an architecture GGUF export does not write before the merge, from the model's config alone. A config
    that cannot be read here (a GGUF base, a hub id not cached) is checked after the merge instead."""
    from ..models.gguf_write import check_architecture
    from ..models.reference import resolve_ref

    source = run_dir if meta["artifact"] == "full" else (meta["base_model"] or {}).get("name_or_path")
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(resolve_ref(str(source))).to_dict()
    except Exception as exc:  # only an early courtesy: the merged model is checked in any case
        log.info("architecture not checked before merging (%s)", exc)
        return
    check_architecture(config)


def _count_tensors(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            total += len(list(f.keys()))
    return total


def _modelfile_text(folder: Path, gguf_name: str, template, tokenizer) -> tuple[str, str | None]:
    from .ollama import TemplateNotDerivable, derive_turn_pieces, go_template, modelfile

    bos = getattr(tokenizer, "bos_token", None)
    adds_bos = bool(bos) and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
    note = None
    try:
        go = go_template(derive_turn_pieces(template, strip_prefix=bos if adds_bos else None))
    except TemplateNotDerivable as exc:
        go, note = None, str(exc)
        log.info("Modelfile without TEMPLATE: %s", exc)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    parameters: dict[str, float | int] = {"num_ctx": min(int(config.get("max_position_embeddings") or 2048), 4096)}
    gen_file = folder / "generation_config.json"
    gen = json.loads(gen_file.read_text(encoding="utf-8")) if gen_file.is_file() else {}
    if gen.get("do_sample"):
        for key, ollama_key in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
            if gen.get(key) is not None:
                parameters[ollama_key] = gen[key]
    if gen.get("repetition_penalty") not in (None, 1.0):
        parameters["repeat_penalty"] = gen["repetition_penalty"]
    return modelfile(gguf_name, template=go, stops=list(template.stop_strings), parameters=parameters), note
