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


def compare(gguf_path: Path, model, tokenizer, prompts: list[str], *, new_tokens: int = 32,
            add_special_tokens: bool = True, llm=None) -> list[PromptAgreement]:
    """`model`/`tokenizer`: the transformers reference (fp32). Prompts are tokenised by the HF tokenizer and the
    same ids go to both engines, so the logits comparison does not depend on tokenisation; `same_tokens` reports
    separately whether llama.cpp's own tokenizer agrees."""
    llm = llm or load_llama(gguf_path)
    stop = {t for t in (tokenizer.eos_token_id,) if t is not None}
    results = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids
        own = llm.tokenize(prompt.encode("utf-8"), add_bos=bool(add_special_tokens and llm.metadata.get(
            "tokenizer.ggml.add_bos_token", "false") == "true"), special=True)
        with torch.no_grad():
            hf = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                                eos_token_id=list(stop) or None, pad_token_id=tokenizer.pad_token_id
                                if tokenizer.pad_token_id is not None else next(iter(stop), 0))
        hf_new = hf[0, len(ids):].tolist()
        gg_new = _llama_greedy(llm, ids, new_tokens, stop)
        prefix = next((i for i, (a, b) in enumerate(zip(hf_new, gg_new)) if a != b), min(len(hf_new), len(gg_new)))
        full = ids + hf_new[:-1] if hf_new else ids
        with torch.no_grad():
            ref = model(torch.tensor([full])).logits[0].double().numpy()
        got = _llama_logits(llm, full)
        ref_top5, got_top5 = np.argsort(-ref, axis=1)[:, :5], np.argsort(-got, axis=1)[:, :5]
        ref_p = _log_softmax(ref)
        got_p = _log_softmax(got)
        results.append(PromptAgreement(
            prompt=prompt, same_tokens=list(own) == ids,
            hf_text=tokenizer.decode(hf_new, skip_special_tokens=True),
            gguf_text=tokenizer.decode(gg_new, skip_special_tokens=True),
            same_greedy=hf_new == gg_new, greedy_prefix=prefix, new_tokens=len(hf_new),
            top1=float(np.mean(ref_top5[:, 0] == got_top5[:, 0])),
            top5=float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ref_top5, got_top5)])),
            max_abs_logit=float(np.abs(ref - got).max()),
            kl=float(np.mean(np.sum(np.exp(ref_p) * (ref_p - got_p), axis=1)))))
    return results


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))
