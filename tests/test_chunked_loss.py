"""The chunked LM-head cross-entropy: the plain loss and gradients without the tokens x vocabulary logits."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from tunesmith.speed.chunked_loss import chunk_tokens, chunked_linear_cross_entropy
from tunesmith.training.trainer import TunesmithTrainer


def _head_problem(dtype=torch.float64, tokens=103, hidden=24, vocab=211, trainable=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=generator, dtype=dtype).requires_grad_()
    w = (0.3 * torch.randn(vocab, hidden, generator=generator, dtype=dtype)).requires_grad_(trainable)
    b = (0.1 * torch.randn(vocab, generator=generator, dtype=dtype)).requires_grad_(trainable)
    t = torch.randint(0, vocab, (tokens,), generator=generator)
    return h, w, b, t


@pytest.mark.parametrize("trainable", [True, False], ids=["trained head", "frozen head"])
def test_matches_a_float64_cross_entropy(trainable):
    """fp32 chunks (of a size that does not divide the tokens) against the plain loss recomputed in float64:
    the summed loss and the gradients of the hidden states, the head's weight and its bias."""
    h64, w64, b64, t = _head_problem(trainable=trainable)
    reference = F.cross_entropy(F.linear(h64, w64, b64), t, reduction="sum")
    reference.backward()
    h, w, b = (x.detach().float().requires_grad_(x.requires_grad) for x in (h64, w64, b64))
    loss = chunked_linear_cross_entropy(h, w, b, t, chunk=17)
    (0.25 * loss).backward()  # the incoming gradient scales every gradient
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(h.grad.double(), 0.25 * h64.grad, atol=1e-5)
    if trainable:
        assert torch.allclose(w.grad.double(), 0.25 * w64.grad, atol=1e-5)
        assert torch.allclose(b.grad.double(), 0.25 * b64.grad, atol=1e-6)
    else:
        assert w.grad is None and b.grad is None


def test_under_bf16_autocast_matches_the_autocast_head():
    """As autocast runs the plain head (bf16 matmul, fp32 loss), within bf16 rounding of it."""
    h, w, _, t = _head_problem(dtype=torch.float32, trainable=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy(F.linear(h, w).float(), t, reduction="sum")
    plain.backward()
    expected = h.grad.clone()
    h.grad = None
    ours = chunked_linear_cross_entropy(h, w, None, t, chunk=10, dtype=torch.bfloat16)
    ours.backward()
    assert ours.item() == pytest.approx(plain.item(), rel=1e-3)
    assert torch.allclose(h.grad, expected, atol=2e-2 * expected.abs().max().item())


def test_chunk_size_bounds_the_logits():
    assert chunk_tokens(49152) * 49152 <= 1 << 24 < (chunk_tokens(49152) + 1) * 49152
    assert chunk_tokens(10 ** 9) == 1


def test_gpu_chunks_are_whole_row_tiles():
    """On CUDA a chunk is a multiple of cuBLAS's 128-row tile within 64M logits (the CPU size gave Llama-3's 128k
    vocabulary 130 rows: two tiles, one nearly empty); a vocabulary too large for one tile still gets rows."""
    assert chunk_tokens(128256, "cuda") == 512
    assert chunk_tokens(49152, "cuda") % 128 == 0 and chunk_tokens(49152, "cuda") * 49152 <= 1 << 26
    assert chunk_tokens(1 << 20, "cuda") == 64 and chunk_tokens(10 ** 9, "cuda") == 1
    assert chunk_tokens(128256) == chunk_tokens(128256, "cpu") == 130  # the CPU size is unchanged


def test_no_tokens_still_backpropagates():
    h, w, b, _ = _head_problem(dtype=torch.float32, tokens=0)
    loss = chunked_linear_cross_entropy(h, w, b, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and h.grad is not None


def _lora_model(folder, dtype=torch.float32):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                             init_lora_weights=False, task_type="CAUSAL_LM"))
    return model.train()


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(3, 200, (3, 12))
    labels = ids.clone()
    labels[0, :5] = labels[1, :3] = -100
    labels[2, 9:] = -100
    return {"input_ids": ids, "labels": labels}


def _loss_and_grads(trainer, model, batch):
    n_items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    model.zero_grad()
    loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True, num_items_in_batch=n_items)
    loss.backward()
    return loss.detach(), outputs, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16 autocast"])
def test_trainer_chunked_loss_matches_supervised_logits(tiny_model_factory, tmp_path, bf16):
    """Same loss and adapter gradients as the supervised-logits path (itself tested against transformers' own
    loss), with no logits left in the outputs: the head ran on no rows."""
    from transformers import TrainingArguments

    model = _lora_model(tiny_model_factory("llama"))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=bf16)
    batch = _batch()
    plain = TunesmithTrainer(model=model, args=args, supervised_logits=True)
    chunked = TunesmithTrainer(model=model, args=args, supervised_logits=True, chunked_loss=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # what accelerate wraps the forward in
        expected_loss, plain_out, expected = _loss_and_grads(plain, model, batch)
        loss, outputs, grads = _loss_and_grads(chunked, model, batch)
    assert chunked.chunked_loss and outputs.logits.shape[0] == 0 < plain_out.logits.shape[0]
    tolerance = 2e-2 if bf16 else 1e-5
    assert loss.item() == pytest.approx(expected_loss.item(), rel=tolerance)
    assert grads.keys() == expected.keys() and grads
    for name, grad in grads.items():
        assert torch.allclose(grad, expected[name], atol=tolerance * expected[name].abs().max().item()), name


def test_first_batch_check_draws_no_random_numbers(tiny_model_factory, tmp_path):
    """The check runs the model once more, in training mode: its dropout must not shift the run's random state."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama"))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], lora_dropout=0.5,
                                             task_type="CAUSAL_LM")).train()
    trainer = TunesmithTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                                    use_cpu=True),
                               supervised_logits=True, chunked_loss=True)
    batch = _batch()
    state = torch.get_rng_state()
    assert trainer._chunked_head(model, batch) is not None
    assert torch.equal(state, torch.get_rng_state())


def test_first_batch_checks_leave_the_steps_autocast_region_with_gradients(tiny_model_factory, tmp_path):
    """The checks (chunked loss, padding mask) run no-grad forwards inside the step's autocast region when a caller
    wraps the step in one. Up to torch 2.10 at least, autocast cached those casts without their graph and the
    step's own forward reused them: no gradient reached any weight (the step's loss had no grad_fn). Without
    probe_forward clearing the cache this failed on torch 2.6, 2.8, 2.9 and 2.10; torch 2.13 fixed the cache
    (pytorch/pytorch#165068), so there it passes either way."""
    from transformers import TrainingArguments

    model = _lora_model(tiny_model_factory("llama"))
    trainer = TunesmithTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                                   use_cpu=True, bf16=True),
                               supervised_logits=True, chunked_loss=True, skip_padding_mask=True)
    batch = {**_batch(), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    batch["attention_mask"][2, 10:] = 0  # right padding: the padding-mask check runs its probe too
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, grads = _loss_and_grads(trainer, model, batch)
    assert trainer._chunked_checked and trainer._padding_mask_checked  # both probes ran in this step
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert grads.keys() == trainable and all(g.abs().sum() > 0 for g in grads.values())


def test_trainer_keeps_full_logits_for_a_soft_capped_head(tmp_path, tmp_path_factory, caplog):
    """Gemma 2 soft-caps its logits after the head: the first batch shows it, and the run keeps the plain path."""
    from transformers import AutoModelForCausalLM, Gemma2Config, TrainingArguments

    config = Gemma2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0)
    folder = tmp_path_factory.mktemp("gemma2")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).train()
    trainer = TunesmithTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                                    use_cpu=True),
                               supervised_logits=True, chunked_loss=True)
    batch = _batch()
    with caplog.at_level(logging.WARNING):
        loss, outputs, _ = _loss_and_grads(trainer, model, batch)
    assert not trainer.chunked_loss and "changes its logits after the head" in caplog.text
    assert outputs.logits.shape[0] == int((batch["labels"][:, 1:] != -100).sum())  # supervised logits instead
    assert torch.isfinite(loss)


def test_an_adapted_head_keeps_the_plain_loss(tiny_model_factory, tmp_path, caplog):
    """LoRA on the head itself: the head is an adapter layer, whose output the chunked loss cannot reproduce."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama"))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"],
                                             task_type="CAUSAL_LM")).train()
    trainer = TunesmithTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                                    use_cpu=True),
                               supervised_logits=True, chunked_loss=True)
    with caplog.at_level(logging.WARNING):
        loss, outputs, grads = _loss_and_grads(trainer, model, _batch())
    assert not trainer.chunked_loss and "not a plain linear layer" in caplog.text
    assert outputs.logits.shape[0] > 0 and any("lm_head" in name for name in grads)


def test_a_second_backward_is_refused():
    """The gradients are handed over (scaled in place) by the first backward; a second would be wrong, so it
    raises instead of silently returning scaled-twice gradients."""
    h, w, b, t = _head_problem(dtype=torch.float32)
    loss = chunked_linear_cross_entropy(h, w, b, t)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_a_frozen_weight_is_cast_once_and_again_after_a_change():
    from tunesmith.speed.chunked_loss import FrozenCast

    weight = torch.randn(50, 8)
    cache = FrozenCast()
    first = cache.get(weight, torch.bfloat16)
    assert first.dtype == torch.bfloat16 and torch.equal(first, weight.to(torch.bfloat16))
    assert cache.get(weight, torch.bfloat16) is first
    weight.mul_(2)  # an in-place write (e.g. a state dict loaded into the model) bumps the tensor's version
    again = cache.get(weight, torch.bfloat16)
    assert again is not first and torch.equal(again, weight.to(torch.bfloat16))
    assert cache.get(weight, torch.float32) is None  # already in the compute dtype
    assert cache.get(weight.clone().requires_grad_(), torch.bfloat16) is None  # a training head changes each step


def test_the_cached_cast_gives_the_same_loss_and_gradients():
    from tunesmith.speed.chunked_loss import FrozenCast

    h, w, _, t = _head_problem(dtype=torch.float32, trainable=False)
    plain = chunked_linear_cross_entropy(h, w, None, t, chunk=10, dtype=torch.bfloat16)
    plain.backward()
    expected = h.grad.clone()
    h.grad = None
    cache = FrozenCast()
    for _ in range(2):
        ours = chunked_linear_cross_entropy(h, w, None, t, chunk=10, dtype=torch.bfloat16, frozen_cast=cache)
        ours.backward()
        assert ours.item() == plain.item() and torch.equal(h.grad, expected)
        h.grad = None


def test_bf16_training_steps_cast_the_frozen_head_only_once(tiny_model_factory, tmp_path):
    """Neither the head's empty call (outside autocast) nor the loss (cached copy) casts the head weight again
    after the first step."""
    from transformers import TrainingArguments

    model = _lora_model(tiny_model_factory("llama"))
    head = model.get_output_embeddings().weight
    trainer = TunesmithTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                                   use_cpu=True, bf16=True),
                               supervised_logits=True, chunked_loss=True)
    batch = _batch()

    def head_casts():
        with torch.profiler.profile(record_shapes=True) as prof:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                _loss_and_grads(trainer, model, batch)
        return sum(1 for event in prof.events()
                   if event.name == "aten::_to_copy" and event.input_shapes[:1] == [list(head.shape)])

    assert head_casts() >= 1  # the first step casts it (and the first-batch check runs the head)
    assert head_casts() == 0
    trainer._head_cast.clear()
    assert head_casts() == 1  # after clearing (as train() does at its end), one cast again, not two


def _eval_set(tokenizer, rows=5):
    """Samples of different lengths, the first few tokens unsupervised (the prompt)."""
    torch.manual_seed(2)
    samples = []
    for length in (9, 14, 6, 11, 13)[:rows]:
        ids = torch.randint(3, 200, (length,)).tolist()
        samples.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    return samples


def _direct_eval_loss(model, samples) -> float:
    """The summed next-token cross-entropy over every supervised token, over their number: each sample alone, in
    float32, with the model's full logits."""
    total, count = 0.0, 0
    with torch.no_grad():
        for sample in samples:
            logits = model(input_ids=torch.tensor([sample["input_ids"]])).logits[0, :-1].float()
            targets = torch.tensor(sample["labels"][1:])
            total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
    return total / count


@pytest.mark.parametrize("method", ["lora", "full"])
def test_evaluation_takes_the_training_paths_and_gives_the_exact_loss(tiny_model_factory, tmp_path, monkeypatch,
                                                                      method):
    """Evaluation runs the head on no rows (no logits over the vocabulary), asks the chunked loss for no gradients
    (a trained head's included), drops the padding mask, and its eval_loss is the direct per-token mean over the
    whole set, whatever the batching (5 samples in batches of 2: the last one shorter). With fast_eval off (what
    transformers' Trainer does) the head computes every supervised row, which shows the hook sees the slow path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    import tunesmith.training.trainer as trainer_module
    from tunesmith.data.collator import make_collator

    folder = tiny_model_factory("llama")
    model = _lora_model(folder) if method == "lora" else AutoModelForCausalLM.from_pretrained(folder).train()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    samples = _eval_set(tokenizer)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                             per_device_eval_batch_size=2, remove_unused_columns=False)
    trainer = TunesmithTrainer(model=model, args=args, eval_dataset=samples, data_collator=make_collator(tokenizer),
                               supervised_logits=True, chunked_loss=True, skip_padding_mask=True)
    head_rows, chunked_inputs, masks = [], [], []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: head_rows.append(out.shape[0]))
    original = trainer_module.chunked_linear_cross_entropy

    def spy(hidden, weight, bias, *args, **kwargs):
        chunked_inputs.append(hidden.requires_grad or weight.requires_grad)
        return original(hidden, weight, bias, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "chunked_linear_cross_entropy", spy)
    base_forward = model.forward

    def forward(*args, **kwargs):
        masks.append(kwargs.get("attention_mask") is not None)
        return base_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    metrics = trainer.evaluate()
    assert len(chunked_inputs) == 3 and not any(chunked_inputs)  # each batch's chunked loss, with no gradient
    assert all(rows == 0 for rows in head_rows[-3:])  # and the head ran on no rows: no vocabulary logits
    # the two right-padded batches went without their mask; the last (one sample, no padding) keeps its all-ones one
    assert masks[-3:] == [False, False, True]
    direct = _direct_eval_loss(model.eval(), samples)
    assert metrics["eval_loss"] == pytest.approx(direct, rel=1e-5)

    head_rows.clear()
    trainer.fast_eval = False
    slow = trainer.evaluate()
    assert len(head_rows) == 3 and all(rows > 0 for rows in head_rows)  # supervised rows x vocabulary, each batch
    # transformers averages the three batch means (the last one counted twice): not the per-token mean
    assert slow["eval_loss"] != pytest.approx(direct, rel=1e-5)
