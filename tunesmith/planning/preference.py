"""What a preference run (`task: dpo | orpo | simpo | kto | reward`) adds to the memory plan, read off how TRL 1.16's
trainers run a batch (docs/planning.md lists what is and is not modelled):

- pairs: dpo, orpo, simpo and reward concatenate chosen and rejected into one batch, so the policy's forward runs
  2 x batch sequences, and everything it keeps for backward doubles. KTO runs one sequence per example;
- the log-probs: dpo and kto score through TRL's fused LM head (chunks of tokens, no batch x seq x vocabulary
  logits), orpo and simpo take the full logits, a reward model's one-output head has no vocabulary at all;
- the reference (dpo, kto, unless precompute_ref_log_probs): a PEFT policy computes it through its own weights
  with the adapter off; any other method loads a second, frozen copy of the model. The reference forward runs
  under no_grad after the policy's forward, so it keeps nothing for backward; while it runs, one block's working
  set, the last hidden state and one chunk of fused-head logits exist beside the policy's saved activations.
"""

from __future__ import annotations

import torch

from .activations import ActivationTrace

PREFERENCE_TASKS = ("dpo", "orpo", "simpo", "kto", "reward")
PAIRED = ("dpo", "orpo", "simpo", "reward")
WITH_REFERENCE = ("dpo", "kto")
FUSED_HEAD = ("dpo", "kto")  # trl.trainer.utils.add_fused_lm_head
FUSED_CHUNK_TOKENS = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE (trl 1.16)


def sequences_per_example(task: str) -> int:
    return 2 if task in PAIRED else 1


def has_reference(task: str, precomputed: bool) -> bool:
    return task in WITH_REFERENCE and not precomputed


def reference_weights(total_params: int, load_dtype: torch.dtype, is_peft: bool) -> float:
    """A second, frozen copy of the model in the dtype training loads it in; none for a PEFT policy."""
    return 0.0 if is_peft else float(total_params * torch.empty((), dtype=load_dtype).element_size())


def reference_pass(trace: ActivationTrace, half: bool) -> float:
    """The no_grad reference forward's transient beside the policy's saved activations: at most one block's
    working set (bounded by what that block saves in training), its output, and one chunk of fused-head logits
    (fp32, plus the half-precision logits under autocast)."""
    chunk = min(FUSED_CHUNK_TOKENS, trace.tokens)
    return max(trace.per_block, default=0) + trace.block_input + chunk * trace.vocab_size * (6 if half else 4)
