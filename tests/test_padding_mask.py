"""speed.switches.skip_padding_mask: right-padded causal-LM batches train without the padding mask, with the same loss."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, BertConfig, BertForMaskedLM, TrainingArguments

from tunesmith.speed.padding_mask import eligible_config, mask_is_redundant, right_padded
from tunesmith.training.trainer import TunesmithTrainer


def test_right_padding_is_recognised():
    assert right_padded(torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]))
    assert not right_padded(torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1]]))  # no padding: nothing to drop
    assert not right_padded(torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))  # left padding
    assert not right_padded(torch.tensor([[1, 0, 1, 0]]))  # a hole
    assert not right_padded(None)


def test_config_conditions(tiny_model_factory):
    config = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama"), attn_implementation="sdpa").config
    assert eligible_config(config)
    config._attn_implementation = "eager"
    assert eligible_config(config)
    config._attn_implementation = "flash_attention_2"  # varlen: skips padding itself
    assert not eligible_config(config)
    config._attn_implementation = "sdpa"
    config.output_router_logits = True  # an MoE auxiliary loss counts the tokens the mask marks
    assert not eligible_config(config)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_a_causal_lm_passes_the_check(tiny_model_factory, arch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory(arch)).train()
    ids = torch.randint(3, 200, (2, 20), generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    assert mask_is_redundant(model, ids)
    assert torch.equal(state, torch.get_rng_state())


def test_a_bidirectional_model_fails_the_check():
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    torch.manual_seed(0)
    model = BertForMaskedLM(config).eval()
    assert not mask_is_redundant(model, torch.randint(3, 200, (2, 20)))


def _lora(folder):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.1,
                                            init_lora_weights=False, task_type="CAUSAL_LM")).train()


def _padded_batch(left: bool = False):
    ids = torch.randint(3, 200, (3, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, length in enumerate((14, 9, 5)):
        if left:
            mask[row, :14 - length] = 0
        else:
            mask[row, length:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _step(trainer, model, batch, seen):
    n_items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    model.zero_grad()
    torch.manual_seed(2)  # same dropout draws for both runs
    handle = model.get_base_model().model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True)
    try:
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items)
    finally:
        handle.remove()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16 autocast"])
def test_trainer_drops_the_mask_of_right_padded_batches_with_the_same_loss(tiny_model_factory, tmp_path, bf16):
    model = _lora(tiny_model_factory("llama"))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=bf16)
    kept = TunesmithTrainer(model=model, args=args, supervised_logits=True, chunked_loss=True)
    skipped = TunesmithTrainer(model=model, args=args, supervised_logits=True, chunked_loss=True,
                               skip_padding_mask=True)
    batch, seen_kept, seen_skipped = _padded_batch(), [], []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # what accelerate wraps the forward in
        expected_loss, expected = _step(kept, model, batch, seen_kept)
        loss, grads = _step(skipped, model, batch, seen_skipped)
    assert seen_kept[-1] is not None and seen_skipped[-1] is None  # the model ran without the mask
    tolerance = 2e-2 if bf16 else 1e-5  # bf16: the masked and causal kernels round differently (fp32: exact)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=tolerance)
    assert grads.keys() == expected.keys() and grads
    for name, grad in grads.items():
        assert torch.allclose(grad, expected[name], atol=tolerance * expected[name].abs().max().item()), name


def test_left_padded_batches_and_eval_keep_the_mask(tiny_model_factory, tmp_path):
    model = _lora(tiny_model_factory("llama"))
    trainer = TunesmithTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                                    use_cpu=True),
                               supervised_logits=True, skip_padding_mask=True)
    seen = []
    _step(trainer, model, _padded_batch(left=True), seen)
    assert seen[-1] is not None
    model.eval()
    with torch.no_grad():
        trainer.compute_loss(model, _padded_batch())
    model.train()
    _step(trainer, model, _padded_batch(), seen)
    assert seen[-1] is None and trainer.skip_padding_mask


def test_the_default_config_turns_it_on():
    from tunesmith.config.schema import SpeedConfig

    assert SpeedConfig().switch("skip_padding_mask") and SpeedConfig(cpu_kernels="off").switch("skip_padding_mask")


@pytest.mark.parametrize("skip", [True, False])
def test_a_training_run_leaves_the_mask_out_of_padded_batches(stories_dir, tmp_path, skip):
    """Through tunesmith's own pipeline (length-grouped, right-padded batches of a real Llama): the model's forward
    sees no attention mask in the training steps with the option on (the default), and the mask with it off."""
    from transformers import TrainerCallback

    from tunesmith.recipes import train

    from .test_training import make_config

    seen = []

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.get_base_model().model.register_forward_pre_hook(
                lambda module, a, kw: seen.append(kw.get("attention_mask") is None) if module.training else None,
                with_kwargs=True)

    train(make_config(stories_dir, tmp_path / "run", max_steps=3, skip_padding_mask=skip),
          extra_callbacks=[Spy()])
    # The last three forwards are the steps (the first batch's checks run the model on short probes before them).
    assert len(seen) > 3 and seen[-3:] == [skip] * 3
