"""What a preference run (`task: dpo | orpo | simpo | kto | reward`) adds to the memory plan, read off how TRL 1.16's
trainers run a batch (docs/planning.md lists what is and is not modelled):

- pairs: dpo, orpo, simpo and reward concatenate chosen and rejected into one batch, so the policy's forward runs
  2 x batch sequences, and everything it keeps for backward doubles. KTO runs one sequence per example;
- the log-probs: dpo and kto score through TRL's fused LM head (no batch x seq x vocabulary logits), orpo and simpo
  take the full logits, a reward model's one-output head has no vocabulary at all. The fused head projects tiles of
  up to 4,096 positions x 32,768 vocabulary columns; on CPU (no Triton) it scores every position, prompt and padding
  too, and folds each tile in torch with several fp32 copies of it alive at once (about 33 bytes per tile element in
  backward: 2 GiB for 4 pairs of 256 tokens). That working set is measured by running TRL's own function on fake
  tensors (`fused_head_memory`), not restated; with Triton (CUDA) only the scored positions are projected and the
  tile is folded in place;
- the reference (dpo, kto, unless precompute_ref_log_probs): a PEFT policy computes it through its own weights
  with the adapter off; any other method loads a second, frozen copy of the model. The reference forward runs
  under no_grad after the policy's forward, so it keeps nothing for backward; while it runs, one block's working
  set, the last hidden state and the fused head's forward working set exist beside the policy's saved activations.
"""

from __future__ import annotations

import functools

import torch

from .activations import ActivationTrace

PREFERENCE_TASKS = ("dpo", "orpo", "simpo", "kto", "reward")
PAIRED = ("dpo", "orpo", "simpo", "reward")
WITH_REFERENCE = ("dpo", "kto")
FUSED_HEAD = ("dpo", "kto")  # trl.trainer.utils.add_fused_lm_head


def sequences_per_example(task: str) -> int:
    return 2 if task in PAIRED else 1


def has_reference(task: str, precomputed: bool, grpo_beta: bool = False) -> bool:
    """Whether training runs a reference forward: dpo and kto unless their log-probs are precomputed, grpo when its
    KL term has a weight."""
    return (task in WITH_REFERENCE and not precomputed) or (task == "grpo" and grpo_beta)


def reference_weights(total_params: int, load_dtype: torch.dtype, is_peft: bool) -> float:
    """A second, frozen copy of the model in the dtype training loads it in; none for a PEFT policy."""
    return 0.0 if is_peft else float(total_params * torch.empty((), dtype=load_dtype).element_size())


def reference_pass(trace: ActivationTrace, fused_forward: float) -> float:
    """The no_grad reference forward's transient beside the policy's saved activations: at most one block's
    working set (bounded by what that block saves in training), its output, and the fused head's forward."""
    return max(trace.per_block, default=0) + trace.block_input + fused_forward


def fused_head_memory(tokens: int, hidden: int, vocab: int, compute_dtype: torch.dtype, *, head_trains: bool,
                      device: str, backward: bool = True, outputs: tuple[str, ...] = ("log_probs",)) -> float:
    """Peak bytes TRL's fused log-prob head allocates for `tokens` positions, in its forward (`backward=False`: the
    reference pass) or its backward (the policy; the backward recomputes the tiles and is the larger of the two).
    CPU: TRL's own function run on fake tensors under CPU autocast. CUDA: its Triton kernels fold each tile in place,
    so the tile buffer, the fp32 gradient accumulators and the casts of the inputs are what it holds (read off the
    code, not measured on a GPU). `outputs`: the per-token fields asked for (GRPO adds the entropy)."""
    if device == "cuda":
        from ..compat import trl_fused_head_tile

        positions, columns = trl_fused_head_tile()
        half = 2 if compute_dtype != torch.float32 else 4
        tile = min(tokens, positions) * columns * half  # the buffer is a full chunk wide
        casts = tokens * hidden * half + min(vocab, columns) * hidden * half
        grads = (4 * tokens * hidden + (4 * vocab * hidden if head_trains else 0)) if backward else 0
        return float(tile + casts + grads + 8 * 4 * tokens)
    return float(_traced_fused_head(tokens, hidden, vocab, compute_dtype, head_trains, backward, outputs))


@functools.lru_cache(maxsize=64)
def _traced_fused_head(tokens: int, hidden: int, vocab: int, compute_dtype: torch.dtype, head_trains: bool,
                       backward: bool, outputs: tuple[str, ...]) -> int:
    from trl.kernels import ChunkedLogProbFunction

    from ..compat import fake_cpu_tensors, trl_fused_head_tile
    from .live_bytes import peak_allocated

    columns = trl_fused_head_tile()[1]
    half = compute_dtype != torch.float32
    with fake_cpu_tensors():
        # Training keeps fp32 weights and autocasts; the head's input arrives in fp32 from the final norm.
        states = torch.empty(tokens, hidden, requires_grad=backward)
        weight = torch.empty(vocab, hidden, requires_grad=backward and head_trains)
        labels = torch.zeros(tokens, dtype=torch.long)

        def run():
            with torch.autocast("cpu", dtype=compute_dtype, enabled=half), torch.set_grad_enabled(backward):
                log_probs = ChunkedLogProbFunction.apply(states, weight, None, labels, 1.0, columns, None,
                                                         1.0, outputs)[0]
                if backward:
                    log_probs.sum().backward()

        return peak_allocated(run)
