"""Check an exported GGUF against the Hugging Face model it came from: the same prompts through transformers and
through llama.cpp (llama-cpp-python), compared on tokens, greedy continuations and the logits at every position.

Used by the tests and by `benchmarks/gguf_agreement.py`; needs the optional llama-cpp-python package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class PromptAgreement:
    prompt: str
    same_tokens: bool  # llama.cpp tokenised the prompt exactly as the HF tokenizer did
    hf_text: str  # greedy continuation, transformers
    gguf_text: str  # greedy continuation, llama.cpp
    same_greedy: bool  # the two continuations are the same tokens
    greedy_prefix: int  # how many leading generated tokens agree
    new_tokens: int
    top1: float  # share of positions (prompt + HF continuation, teacher-forced) where both pick the same next token
    top5: float  # mean overlap of the two top-5 sets
    max_abs_logit: float  # largest |logit difference| anywhere
    kl: float  # mean KL(transformers || llama.cpp) of the next-token distributions, nats


def load_llama(gguf_path: Path, n_ctx: int = 512, threads: int | None = None):
    from llama_cpp import Llama

    return Llama(model_path=str(gguf_path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=threads,
                 n_batch=n_ctx, seed=0)


def _llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float64)


def _llama_greedy(llm, ids: list[int], n: int, stop: set[int]) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if token in stop:
            break
        llm.eval([token])
    return out


@dataclass
class Reference:
    """What transformers did with one prompt: its ids, greedy continuation and logits at every position."""

    prompt: str
    ids: list[int]
    new: list[int]
    logits: np.ndarray  # (len(ids) + len(new) - 1, vocab): the prompt and the continuation, teacher-forced


def reference(model, tokenizer, prompts: list[str], *, new_tokens: int = 32,
              add_special_tokens: bool = True) -> list[Reference]:
    """Run the transformers model (fp32) once per prompt; the result is compared with any number of GGUF files."""
    stop = [t for t in (tokenizer.eos_token_id,) if t is not None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else 0)
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=stop or None, pad_token_id=pad)
            new = gen[0, len(ids):].tolist()
            full = ids + new[:-1] if new else ids
            logits = model(torch.tensor([full])).logits[0].double().numpy()
        out.append(Reference(prompt, ids, new, logits))
    return out


def compare(gguf_path: Path, refs: list[Reference], tokenizer, *, add_special_tokens: bool = True,
            llm=None) -> list[PromptAgreement]:
    """The GGUF through llama.cpp against `reference(...)`. The prompt ids of the HF tokenizer go to both engines,
    so the logits comparison does not depend on tokenisation; `same_tokens` says whether llama.cpp's own
    tokenizer agrees."""
    llm = llm or load_llama(gguf_path)
    stop = {t for t in (tokenizer.eos_token_id,) if t is not None}
    adds_bos = add_special_tokens and llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    results = []
    for ref in refs:
        own = llm.tokenize(ref.prompt.encode("utf-8"), add_bos=adds_bos, special=True)
        got_new = _llama_greedy(llm, ref.ids, max(1, len(ref.new)), stop)
        prefix = next((i for i, (a, b) in enumerate(zip(ref.new, got_new)) if a != b), min(len(ref.new), len(got_new)))
        got = _llama_logits(llm, ref.ids + ref.new[:-1] if ref.new else ref.ids)
        ref_top5, got_top5 = np.argsort(-ref.logits, axis=1)[:, :5], np.argsort(-got, axis=1)[:, :5]
        ref_p, got_p = _log_softmax(ref.logits), _log_softmax(got)
        results.append(PromptAgreement(
            prompt=ref.prompt, same_tokens=list(own) == ref.ids,
            hf_text=tokenizer.decode(ref.new, skip_special_tokens=True),
            gguf_text=tokenizer.decode(got_new, skip_special_tokens=True),
            same_greedy=ref.new == got_new, greedy_prefix=prefix, new_tokens=len(ref.new),
            top1=float(np.mean(ref_top5[:, 0] == got_top5[:, 0])),
            top5=float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ref_top5, got_top5)])),
            max_abs_logit=float(np.abs(ref.logits - got).max()),
            kl=float(np.mean(np.sum(np.exp(ref_p) * (ref_p - got_p), axis=1)))))
    return results


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))
