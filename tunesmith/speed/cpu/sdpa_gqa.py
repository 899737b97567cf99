"""Grouped-query attention on CPU without copying keys and values per head.

Why: transformers' SDPA attention hands `enable_gqa` to torch only when there is no attention mask (a CUDA
constraint: masked GQA falls back to the math kernel there). Otherwise it repeats every key and value head for the
query heads that share it (`repeat_kv`): a copy per layer in the forward pass, kept for backward, and a sum over the
copies in the backward pass. A length-grouped batch always carries a padding mask, so every CPU training step paid
it. torch's CPU flash-attention kernel takes the mask and `enable_gqa` together; transformers' own switch for that,
the `TRANSFORMERS_SDPA_FORCE_GQA` environment variable, is read at each attention call. SmolLM2-135M (9 query
heads over 3 key/value heads), LoRA, batch 4 x ~360 tokens under bf16 autocast: a training step 16% faster in a
same-process A/B, +4% tokens/s between subprocess medians (benchmarks/sft_throughput.py row (m) turns it off), and
the copies no longer kept for backward (-96 MiB peak there). The attention computed is the same: each query head still
attends to its group's key and value head.
"""

from __future__ import annotations

import os

from ...compat import SDPA_FORCE_GQA as GQA_VARIABLE, set_sdpa_force_gqa

#: What the user's environment said before tunesmith touched it: their setting always wins.
_USERS_SETTING = os.environ.get(GQA_VARIABLE)


def grouped_query_sdpa(enabled: bool) -> bool:
    """Have transformers' SDPA pass `enable_gqa` with a mask in this process (CPU runs; `speed.switches.sdpa_gqa`).
    Returns whether it is on."""
    if _USERS_SETTING is not None:
        return _USERS_SETTING == "1"
    set_sdpa_force_gqa(enabled)
    return enabled
