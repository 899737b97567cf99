"""Every place tunesmith relies on a library's internals, in one module.

transformers, PEFT and torch have no public call for these; each is used here only, so that a library upgrade that
moves one breaks one function, and `tests/test_compat.py` names it. Everything else in tunesmith uses public APIs.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

# transformers' SDPA attention passes `enable_gqa` with a mask only when this variable is "1" (read at each call).
SDPA_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


def attention_implementation(config) -> str | None:
    """The attention implementation a model config resolved to (transformers keeps it in a private field; the
    public `attn_implementation` is what was *requested*)."""
    return getattr(config, "_attn_implementation", None)


def set_attention_implementation(config, name: str) -> None:
    """For tests and probes that need a config claiming an implementation without loading its kernel."""
    config._attn_implementation = name


def base_config(model):
    """The config of the model under a PEFT wrapper (or the model's own)."""
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config


def set_sdpa_force_gqa(enabled: bool) -> None:
    os.environ[SDPA_FORCE_GQA] = "1" if enabled else "0"


def load_checkpoint_weights(trainer, checkpoint) -> None:
    """Load a checkpoint's weights into the trainer's model. The Trainer's own loader (what resume uses) knows every
    artifact kind a method may save (adapters, full weights, sharded files); transformers has no public call that
    loads weights only."""
    trainer._load_from_checkpoint(str(checkpoint))


def logits_mask_supported() -> bool:
    """Whether this transformers slices logits with a boolean `logits_to_keep` mask (`slice_logits_to_keep`)."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def no_packed_sequence_detection():
    """transformers detects packed rows from position-id values (`.item()`), which meta tensors (the planner's
    trace) do not have: skip the detection inside."""
    from unittest import mock

    import transformers.masking_utils as masking

    with mock.patch.object(masking, "find_packed_sequence_indices", lambda *a, **k: None):
        yield


@contextmanager
def fake_cpu_tensors():
    """Tensors with a shape, a dtype and the CPU as device, but no storage behind them (torch's FakeTensorMode).
    The planner runs a library's own CPU code on them to see what it allocates: unlike the meta device, they pass
    the device-type checks such code makes (autocast state, kernel choice)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        yield


def dispatch_mode():
    """torch's base class for a mode that sees every operator call (documented with `__torch_dispatch__`, but
    exported from a private module)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


def trl_fused_head_tile() -> tuple[int, int]:
    """(positions, vocabulary columns) per tile of TRL's fused log-prob head. The column count is a private constant
    of trl.trainer.utils (1.16); read here so that a TRL that changes it changes the memory plan with it."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils

    return chunked_logprob.TOKEN_CHUNK_SIZE, utils._CHUNKED_LOGPROB_CHUNK_SIZE
