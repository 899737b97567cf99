"""The Trainer tunesmith trains with: transformers' Trainer, projecting onto the vocabulary only where it learns.

A causal LM's loss needs logits only at positions whose *next* token is supervised; the prompt, padding and
packing separators need none. Transformers' models accept `logits_to_keep` as a boolean (batch, seq) mask and then
run the LM head on those positions alone (`slice_logits_to_keep`); transformers has no switch that derives that
mask from the labels, so this subclass does, through the Trainer's public hooks (`compute_loss_func` and
`compute_loss`). The loss is the same summed cross-entropy over the supervised tokens divided by the same
`num_items_in_batch`, so what is learned does not change; the LM head (vocabulary x hidden, the largest single
matmul of a small model) and the float32 logits shrink to the supervised share of the tokens.

With `chunked_loss` the head's input at those positions is taken as it enters the head (a forward pre-hook; the head
itself then runs on no rows) and the loss goes through `chunked_loss.chunked_linear_cross_entropy`: no logits over
the vocabulary at all. Models that change their logits after the head (soft-capping, scaling) are detected on the
first batch, by comparing the model's own logits with the head's, and keep the plain path.

With `loss_terms` (the retain options, `tunesmith/retain/`) a hook adds terms to each training step's loss from the
model, the batch as the model got it and the student's scores at the trained positions (`HeadRows`: the head input
or the logits, as the loss path had them); each term is logged on its own (`loss_<name>`) beside `loss_task`.

With `skip_padding_mask` a right-padded training batch reaches the model without its attention mask, so attention
runs causal-only (`padding_mask.py`, which says why that is exact and when it applies).

Evaluation (the validation set during training, `evaluate()` after it) takes the same paths as a training step's
forward: logits only at supervised positions, the chunked loss (no logits over the vocabulary at all), no padding
mask for right-padded batches; only the loss, never logits or generations, is kept. Without the chunked loss an
evaluation batch held its supervised rows' logits over the whole vocabulary (SmolLM2: ~0.5 GB per 1,000 response
tokens, as bf16 logits, their float32 copy and its log-softmax) and cast the head to bf16 at every batch
(benchmarks/eval_throughput.py, docs/evaluation.md). `eval_loss` is the summed cross-entropy
over every supervised validation token divided by their number, so it does not depend on how the set is batched
(transformers averages per-batch means, the last, shorter batch counted as a full one).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import Trainer

from ..data.encoding import IGNORE_INDEX
from ..speed.logits import HeadInput, HeadRows, next_token_mask, plain_head
from ..speed.chunked_loss import FrozenCast, head_compute_dtype, chunked_linear_cross_entropy
from ..speed.padding_mask import eligible_config, mask_is_redundant, right_padded
from ..speed.probe_forward import probe_forward

log = logging.getLogger(__name__)


def supervised_targets(labels: torch.Tensor) -> torch.Tensor:
    """The next tokens at the kept positions, in mask order."""
    return labels[:, 1:][next_token_mask(labels)[:, :-1]]


def per_item(total: torch.Tensor, targets: int, num_items_in_batch=None) -> torch.Tensor:
    """A summed loss divided by the tokens of the whole accumulated batch, as transformers' causal-LM loss does
    (by this batch's `targets` when the Trainer gives no count)."""
    if num_items_in_batch is None:
        return total / max(targets, 1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def supervised_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy of the kept logits (in mask order) against the next tokens; summed over the supervised
    tokens and divided by the tokens of the whole accumulated batch, as transformers' causal-LM loss does."""
    targets = supervised_targets(labels).to(outputs.logits.device)
    loss = F.cross_entropy(outputs.logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return per_item(loss, targets.numel(), num_items_in_batch)


class TunesmithTrainer(Trainer):
    """`Trainer` with `supervised_logits=True`: logits only where the loss reads them, and with `chunked_loss`
    not even those (see the module docstring)."""

    def __init__(self, *args, supervised_logits: bool = False, chunked_loss: bool = False,
                 activation_offload: bool = False, skip_padding_mask: bool = False, loss_terms=None,
                 fast_eval: bool = True, **kwargs):
        if supervised_logits and kwargs.get("compute_loss_func") is None:
            kwargs["compute_loss_func"] = self._loss
        self._taken: HeadInput | None = None
        super().__init__(*args, **kwargs)
        self.supervised_logits = supervised_logits
        self.chunked_loss = supervised_logits and chunked_loss
        self.activation_offload = activation_offload
        self.skip_padding_mask = skip_padding_mask  # padding_mask.py; turned off if the first check fails
        self._padding_mask_checked = False
        self._checked = False
        self._chunked_checked = False
        self._head_cast = FrozenCast()
        # loss_terms(model, inputs, student: HeadRows, extras) -> {name: weighted term}; its `batch_keys` are batch
        # entries for it, not for the model.
        self.loss_terms = loss_terms
        self._student: HeadRows | None = None
        self._sent: dict | None = None
        self._term_sums: dict[str, float] = {}
        self._term_batches = 0
        # False: evaluation as transformers' Trainer does it (benchmarks/eval_throughput.py compares the two).
        self.fast_eval = fast_eval
        self._eval_sums: list | None = None  # (summed loss, tokens) per batch of the evaluation in progress

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            self._head_cast.clear()  # the frozen head's half-precision copy is for training steps only

    def compute_loss_context_manager(self):
        # Activation offload: tensors saved for backward during the forward pass wait in (pinned) CPU memory;
        # with gradient checkpointing those are only the layer inputs. Trainer has no option for it; torch's
        # save_on_cpu is the maintained mechanism.
        stack = super().compute_loss_context_manager()
        if self.activation_offload and self.model.training:
            stack.enter_context(torch.autograd.graph.save_on_cpu(pin_memory=True))
        return stack

    def _head_dtype(self) -> torch.dtype | None:
        """The dtype autocast gives the head's matmul in training (the loss runs outside the model's forward,
        where accelerate's autocast does not reach)."""
        return torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None

    def _chunked_matches_model(self, model, inputs, head) -> bool:
        """Whether the model's logits are its head's output and nothing more: one short row, no gradients, the
        random state untouched (dropout draws would otherwise shift the run)."""
        ids = inputs["input_ids"][:1, :32]
        keep = torch.ones_like(ids, dtype=torch.bool)
        captured = {}

        def grab(module, args, output):
            captured["hidden"] = args[0]

        handle = head.register_forward_hook(grab)
        try:
            outputs = probe_forward(model, input_ids=ids, logits_to_keep=keep)
        finally:
            handle.remove()
        logits = getattr(outputs, "logits", None)
        if logits is None or "hidden" not in captured:  # the model cannot run the probe, or never reached the head
            return False
        dtype = head_compute_dtype(head.weight, self._head_dtype())
        with torch.no_grad(), torch.autocast(ids.device.type, enabled=False):
            bias = head.bias.to(dtype) if head.bias is not None else None
            ours = F.linear(captured["hidden"].to(dtype), head.weight.to(dtype), bias)
        return logits.shape == ours.shape and torch.allclose(logits.float(), ours.float(), rtol=1e-5, atol=1e-6)

    def _loss(self, outputs, labels, num_items_in_batch=None):
        """`compute_loss_func`: the chunked loss over the head input taken in this forward, else the plain one."""
        if self._taken is None:
            self._student = HeadRows(logits=outputs.logits)
            return supervised_loss(outputs, labels, num_items_in_batch)
        hidden, head = self._taken.hidden, self._taken.head
        self._student = HeadRows(hidden=hidden, head=head)
        targets = supervised_targets(labels).to(hidden.device)
        weight, bias = head.weight, head.bias
        if not torch.is_grad_enabled():
            # Evaluation: under no_grad a custom autograd Function still sees needs_input_grad True for a leaf that
            # requires grad (full fine-tuning's head weight), and this one computes its gradients in the forward
            # pass (a vocabulary x hidden fp32 buffer and two matmuls per chunk); detached, it computes the loss.
            hidden, weight = hidden.detach(), weight.detach()
            bias = bias.detach() if bias is not None else None
        total = chunked_linear_cross_entropy(hidden, weight, bias, targets, dtype=self._head_dtype(),
                                             frozen_cast=self._head_cast)
        return per_item(total, targets.numel(), num_items_in_batch)

    def _chunked_head(self, model, masked) -> torch.nn.Linear | None:
        """The head to take the input of, once the first batch has shown the model's logits are its output."""
        head = plain_head(self.accelerator.unwrap_model(model))
        if not self._chunked_checked:
            self._chunked_checked = True
            why = "its output head is not a plain linear layer" if head is None else \
                None if self._chunked_matches_model(self._probe_model(model), masked, head) \
                else "it changes its logits after the head"
            if why:
                log.warning("chunked loss: not for %s (%s); computing the supervised logits in full",
                            type(model).__name__, why)
                self.chunked_loss = False
                return None
        return head

    def _probe_model(self, model):
        """The model a first-batch probe runs: unwrapped, because a DDP forward joins collectives (the buffers'
        broadcast) and a probe runs only on the ranks whose batch calls for it, so the ranks' collectives would no
        longer pair up (seen as a gloo size mismatch when a resumed run's ranks started on different batches)."""
        return self.accelerator.unwrap_model(model)

    def _without_padding_mask(self, model, inputs) -> bool:
        """Whether this batch's attention mask can be left out (padding_mask.py); the model is checked once."""
        if not (self.skip_padding_mask and self._fast(model) and right_padded(inputs.get("attention_mask"))):
            return False
        if not self._padding_mask_checked:
            self._padding_mask_checked = True
            probe = self._probe_model(model)
            self.skip_padding_mask = eligible_config(getattr(probe, "config", None)) and mask_is_redundant(
                probe, inputs["input_ids"])
            if not self.skip_padding_mask:
                log.info("skip_padding_mask: not for %s; right-padded batches keep their attention mask",
                         type(model).__name__)
        return self.skip_padding_mask

    def _fast(self, model) -> bool:
        """Whether this forward takes the training step's paths: training, or an evaluation with `fast_eval`."""
        return model.training or self.fast_eval

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """transformers' loop, with `{prefix}_loss` over every supervised token of the set (module docstring)."""
        self._eval_sums = [] if self.fast_eval else None
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
        finally:
            sums, self._eval_sums = self._eval_sums, None
            if not self.is_in_train:
                self._head_cast.clear()  # evaluate() after training: the head's copy is not kept beyond it
        key = f"{metric_key_prefix}_loss"
        if sums and key in output.metrics:
            totals = torch.stack([total for total, _ in sums]).cpu()  # one device sync, at the end
            counts = torch.stack([count for _, count in sums]).cpu().double()
            finite = torch.isfinite(totals)
            if self.args.logging_nan_inf_filter and finite.any():  # as transformers filters its batch losses
                totals, counts = totals[finite], counts[finite]
            if counts.sum() > 0:
                output.metrics[key] = (totals.double().sum() / counts.sum()).item()
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        labels = inputs.get("labels")
        loss, logits, labels_out = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if self._eval_sums is not None and loss is not None and torch.is_tensor(labels) and labels.dim() == 2:
            # The batch's loss is its summed cross-entropy over these next-token targets divided by their number
            # (the count transformers passes as num_items_in_batch, or the model's own mean over them).
            count = (labels[:, 1:] != IGNORE_INDEX).sum().to(loss.device)
            self._eval_sums.append((loss.detach().float() * count, count))
        return loss, logits, labels_out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_terms is None:
            return self._task_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        extras = {key: inputs.pop(key) for key in self.loss_terms.batch_keys if key in inputs}
        if not model.training or "labels" not in inputs:
            return self._task_loss(model, inputs, return_outputs, num_items_in_batch)
        self._student = None
        loss, outputs = self._task_loss(model, inputs, True, num_items_in_batch)
        student = self._student or HeadRows(logits=outputs.logits)  # transformers' own loss: all the logits
        terms = self.loss_terms(model, self._sent, student, extras)
        # Terms are per step: where the task loss is already divided over the accumulated batch
        # (num_items_in_batch), each micro-batch adds its share; otherwise the Trainer divides the sum itself.
        scaled = self.compute_loss_func is not None or (self.model_accepts_loss_kwargs and
                                                        num_items_in_batch is not None)
        share = 1 / self.current_gradient_accumulation_steps if scaled else 1
        for name, term in terms.items():
            loss = loss + share * term.to(loss.device)
            self._term_sums[name] = self._term_sums.get(name, 0.0) + term.detach().float().item()
        self._term_batches += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Training logs gain each retain term (mean per step since the last log) and `loss_task`, the loss
        without them."""
        if "loss" in logs and self._term_batches:
            terms = {name: total / self._term_batches for name, total in self._term_sums.items()}
            logs = {**logs, "loss_task": logs["loss"] - sum(terms.values()), **terms}
            self._term_sums, self._term_batches = {}, 0
            log.info("step %d: loss %.4f = task %.4f + %s", self.state.global_step, logs["loss"], logs["loss_task"],
                     " + ".join(f"{name.removeprefix('loss_')} {value:.4g}" for name, value in terms.items()))
        super().log(logs, *args, **kwargs)

    def _task_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss the task trains on (the speed plan's loss path); `_sent` is the batch as the model got it."""
        self._sent = dict(inputs)
        if not self.supervised_logits or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        masked = {**inputs, "logits_to_keep": next_token_mask(inputs["labels"])}
        if self._without_padding_mask(model, inputs):
            del masked["attention_mask"]
        self._sent = dict(masked)  # before the Trainer pops the labels from it
        head = self._chunked_head(model, masked) if self.chunked_loss and self._fast(model) else None
        if head is not None:
            with HeadInput(head) as self._taken:
                try:
                    return super().compute_loss(model, masked, return_outputs, num_items_in_batch)
                finally:
                    self._taken = None
        if self._checked:
            return super().compute_loss(model, masked, return_outputs, num_items_in_batch)
        # First batch: make sure this model's forward really slices with the mask (flat logits); otherwise
        # go back to full logits and transformers' own loss for the rest of the run.
        try:
            loss, outputs = super().compute_loss(model, masked, True, num_items_in_batch)
            if outputs.logits.dim() != 2:
                raise ValueError(f"logits of shape {tuple(outputs.logits.shape)}")
        except (IndexError, ValueError, RuntimeError) as exc:
            log.warning("logits only at supervised positions is not possible with %s (%s); computing all of them",
                        type(model).__name__, exc)
            self.supervised_logits, self.compute_loss_func = False, None
            self._sent, self._student = dict(inputs), None
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._checked = True
        return (loss, outputs) if return_outputs else loss
