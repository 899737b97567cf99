"""Every method in the registry: it learns, saves, reloads and reproduces its outputs; method-specific checks."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from tunesmith.methods import bottleneck_layers as bottleneck
from tunesmith.methods.registry import all_methods, get_method
from tunesmith.models.loading import load_for_inference
from tunesmith.recipes import train

from .test_training import batch, first_last, losses, make_config

# qlora and full have their own tests in test_training.py; the rest run here.
METHOD_OPTIONS = {
    "lora": {}, "dora": {}, "rslora": {},
    "adalora": {"init_r": 8, "target_r": 2, "tinit": 0.1, "tfinal": 0.2},
    "loraplus": {"lr_ratio": 8},
    "vera": {"r": 32},
    "pissa": {"r": 4}, "olora": {"r": 4},
    "ia3": {},
    "prefix": {"num_virtual_tokens": 8, "encoder_hidden_size": 32},
    "ptuning_v2": {"num_virtual_tokens": 8},
    "prompt": {"num_virtual_tokens": 8},
    "houlsby": {"size": 16}, "pfeiffer": {"size": 16},
    "hybrid": {"lora_r": 4, "adapter_size": 8, "num_virtual_tokens": 4},
    "freeze": {"trainable_layers": 1},
    "progressive": {"top_k": 1, "boundaries": [0.2, 0.5]},
}
# Soft prompts and IA3/VeRA move slowly at a shared learning rate; they get their usual larger one.
LEARNING_RATES = {"prompt": 3e-2, "prefix": 1e-2, "ptuning_v2": 3e-2, "ia3": 3e-2, "vera": 2e-2, "hybrid": 1e-2}


def test_every_registered_method_is_covered():
    assert set(all_methods()) - {"qlora", "full"} == set(METHOD_OPTIONS)


class CaptureLogits(TrainerCallback):
    def __init__(self, inputs):
        self.inputs, self.logits = inputs, None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.logits = model(**self.inputs).logits.clone()


@pytest.mark.parametrize("name", sorted(METHOD_OPTIONS))
def test_method_learns_saves_and_reloads(stories_dir, tmp_path, name):
    run = tmp_path / "run"
    capture = CaptureLogits(batch(stories_dir))
    cfg = make_config(stories_dir, run, {"name": name, **METHOD_OPTIONS[name]}, max_steps=16,
                      learning_rate=LEARNING_RATES.get(name, 5e-3))
    train(cfg, extra_callbacks=[capture])
    start, end = first_last(losses(run))
    assert end < start, (name, start, end)

    loaded = load_for_inference(str(run))
    with torch.no_grad():
        reloaded = loaded.model(**batch(stories_dir)).logits
    # PiSSA/OLoRA adapters are converted back to a base-relative adapter in float32 on save: an error that grows
    # with the trained weights, so measured against the logits' scale (1e-4 of it; a wrong conversion is O(1)).
    # On torch 2.8 OLoRA's came to 4.3e-4 at a scale of 10.8, just over the 1e-4 + 3e-5 of it allowed before.
    scale = float(capture.logits.abs().max())
    error = float((reloaded - capture.logits).abs().max())
    assert error <= 1e-4 + 1e-4 * scale, (error, scale)


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_bottleneck_adapters_are_the_identity_at_initialisation(stories_dir, placement):
    base = AutoModelForCausalLM.from_pretrained(stories_dir).eval()
    inputs = batch(stories_dir)
    with torch.no_grad():
        before = base(**inputs).logits
    container = bottleneck.attach(base, size=16, placement=placement, activation="gelu")
    with torch.no_grad():
        after = base(**inputs).logits
    assert torch.equal(before, after)
    expected = 5 * (2 if placement == "houlsby" else 1)
    assert len(container.adapters) == expected
    # ...and not the identity once the up-projection moves: the hooks really sit in the forward pass.
    with torch.no_grad():
        next(iter(container.adapters.values())).up.bias.fill_(0.5)
        assert not torch.allclose(base(**inputs).logits, before)


def test_hybrid_stages_train_exactly_their_parameters(stories_dir, tmp_path):
    from tunesmith.methods.hybrid import part_of

    snapshots = {}

    class Snapshot(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step in (0, 3, 6):
                snapshots[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}

        def on_train_end(self, args, state, control, model=None, **kwargs):
            snapshots["end"] = {n: p.detach().clone() for n, p in model.named_parameters()}

    opts = {"name": "hybrid", "lora_r": 4, "adapter_size": 8, "num_virtual_tokens": 4, "staged": True,
            "boundaries": [3, 6], "unit": "steps"}
    train(make_config(stories_dir, tmp_path / "run", opts, max_steps=9, learning_rate=1e-2),
          extra_callbacks=[Snapshot()])

    def changed(a, b):
        return {part_of(n) for n in snapshots[a] if not torch.equal(snapshots[a][n], snapshots[b][n])}

    assert changed(0, 3) == {"prompt"}
    assert changed(3, 6) == {"prompt", "lora"}
    assert changed(6, "end") == {"prompt", "lora", "adapter"}


def test_hybrid_lora_part_loads_in_plain_peft(stories_dir, tmp_path):
    from peft import PeftModel

    train(make_config(stories_dir, tmp_path / "run", {"name": "hybrid", **METHOD_OPTIONS["hybrid"]}, max_steps=4,
                      learning_rate=1e-2))
    base = AutoModelForCausalLM.from_pretrained(stories_dir)
    lora_only = PeftModel.from_pretrained(base, tmp_path / "run" / "lora")
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in lora_only.named_parameters())


def test_adalora_reallocates_ranks_during_training(stories_dir, tmp_path):
    ranks = {}

    class Ranks(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            ranks.update(model.peft_config["default"].rank_pattern or {})

    opts = {"name": "adalora", "init_r": 8, "target_r": 2, "tinit": 0.1, "tfinal": 0.3}
    train(make_config(stories_dir, tmp_path / "run", opts, max_steps=20), extra_callbacks=[Ranks()])
    kept = [sum(mask) for mask in ranks.values()]
    assert kept, "AdaLoRA never produced a rank pattern"
    assert sum(kept) < 8 * len(kept), "the budget should have pruned ranks"
    assert len(set(kept)) > 1 or max(kept) < 8, kept


def test_loraplus_uses_a_larger_learning_rate_for_b(stories_dir, tmp_path):
    seen = {}

    class Groups(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            for group in optimizer.param_groups:
                for param in group["params"]:
                    seen[id(param)] = group["lr"]

        def on_train_end(self, args, state, control, model=None, **kwargs):
            seen["a"] = {seen[id(p)] for n, p in model.named_parameters() if "lora_A" in n}
            seen["b"] = {seen[id(p)] for n, p in model.named_parameters() if "lora_B" in n}

    train(make_config(stories_dir, tmp_path / "run", {"name": "loraplus", "lr_ratio": 8}, max_steps=2,
                      learning_rate=1e-3), extra_callbacks=[Groups()])
    assert seen["a"] == {1e-3} and seen["b"] == {8e-3}


def test_progressive_unfreezing_follows_its_schedule(stories_dir):
    model = AutoModelForCausalLM.from_pretrained(stories_dir)
    method = get_method("progressive")
    opts = method.Options(top_k=2, boundaries=[2, 4], unit="steps")
    method.prepare(model, opts, gradient_checkpointing=False)
    [schedule] = method.callbacks(model, opts)

    class State:
        max_steps, epoch = 10, 0.0

    def trainable_blocks(step):
        State.global_step = step
        schedule.on_step_begin(None, State, None)
        return sorted({int(n.split(".")[2]) for n, p in model.named_parameters() if p.requires_grad and ".layers." in n})

    assert trainable_blocks(0) == [] and model.lm_head.weight.requires_grad
    assert trainable_blocks(2) == [3, 4]
    assert trainable_blocks(4) == [0, 1, 2, 3, 4]


def test_freeze_trains_only_the_last_blocks(stories_dir):
    model = AutoModelForCausalLM.from_pretrained(stories_dir)
    get_method("freeze").prepare(model, get_method("freeze").Options(trainable_layers=2, train_head=False),
                                 gradient_checkpointing=False)
    blocks = {int(n.split(".")[2]) for n, p in model.named_parameters() if p.requires_grad and ".layers." in n}
    assert blocks == {3, 4}
    assert not model.model.embed_tokens.weight.requires_grad


def test_ptuning_v2_init_text_starts_as_the_base_model_reading_that_text(stories_dir):
    """The prefixes are the base model's keys and values for the text's first tokens, so the adapted model's logits
    equal the base model's on that text followed by the input."""
    from transformers import AutoTokenizer

    from tunesmith.errors import ConfigError

    method = get_method("ptuning_v2")
    text = "Once upon a time there was a little girl named Lily."
    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    base = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32).eval()
    opts = method.Options(num_virtual_tokens=4, init_text=text)
    model = method.prepare(AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32), opts,
                           gradient_checkpointing=False)
    method.initialise(model, opts, tokenizer)
    model.eval()
    inputs = batch(stories_dir)
    prefix_ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :4]
    with torch.no_grad():
        adapted = model(**inputs).logits
        reference = base(input_ids=torch.cat([prefix_ids, inputs["input_ids"]], dim=1)).logits[:, 4:]
    assert torch.allclose(adapted, reference, atol=1e-4), (adapted - reference).abs().max()
    with torch.no_grad():
        plain = base(**inputs).logits
    assert not torch.allclose(adapted, plain, atol=1e-2)  # the prefix is really there

    assert method.Options().init_text  # the default starts from a text
    opts = method.Options(num_virtual_tokens=4, init_text=None)
    random_start = method.prepare(AutoModelForCausalLM.from_pretrained(stories_dir), opts,
                                  gradient_checkpointing=False)
    method.initialise(random_start, opts, tokenizer)
    assert 0.9 < float(random_start.prompt_encoder["default"].embedding.weight.std()) < 1.1  # PEFT's N(0, 1)
    opts = method.Options(init_text="Once upon")
    with pytest.raises(ConfigError, match="init_text is 3 tokens"):
        method.initialise(method.prepare(AutoModelForCausalLM.from_pretrained(stories_dir), opts,
                                         gradient_checkpointing=False), opts, tokenizer)


def test_ptuning_v2_init_text_failure_is_a_config_error(stories_dir, monkeypatch):
    import peft
    from transformers import AutoTokenizer

    from tunesmith.errors import ConfigError

    def unreadable(*args, **kwargs):
        raise ValueError("Inconsistent head shapes across layers in `past_key_values`.")

    monkeypatch.setattr(peft, "initialize_kv_prefix_from_text", unreadable)
    method = get_method("ptuning_v2")
    opts = method.Options(num_virtual_tokens=4)
    model = method.prepare(AutoModelForCausalLM.from_pretrained(stories_dir), opts, gradient_checkpointing=False)
    model.train()
    with pytest.raises(ConfigError, match="cannot start the prefixes from init_text.*head shapes") as caught:
        method.initialise(model, opts, AutoTokenizer.from_pretrained(stories_dir))
    assert "init_text: null" in caught.value.hint and model.training


def test_prompt_methods_refuse_packing(tmp_path):
    from tunesmith.config.loading import validate_config
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot train on packed"):
        validate_config({"model": {"name_or_path": "x/y"}, "method": {"name": "prefix"},
                         "data": {"train": [{"path": "a.json"}], "packing": True}})


@pytest.mark.parametrize("name", ["prefix", "ptuning_v2", "prompt", "hybrid"])
def test_prompt_methods_refuse_classification(name):
    from tunesmith.config.loading import validate_config
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match="not task: classification") as caught:
        validate_config({"task": "classification", "model": {"name_or_path": "x/y"}, "method": {"name": name},
                         "data": {"train": [{"path": "a.csv"}]}})
    assert caught.value.where.endswith("method.name")


def test_methods_cli_prints_every_method_with_exact_counts(stories_dir, monkeypatch, capsys):
    from tunesmith.cli.main import main as cli_main

    monkeypatch.setenv("COLUMNS", "250")  # one table row per line
    assert cli_main(["methods", "--model", str(stories_dir)]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 5 and " of " in cells[3]:
            trainable, total = (int(x.replace(",", "")) for x in cells[3].split(" of "))
            rows[cells[0]] = (trainable, total, float(cells[4]))
    assert set(rows) == set(all_methods())

    # independent counts: LoRA's default r=16 on every linear layer but the head is r·(in + out) per layer
    base = AutoModelForCausalLM.from_pretrained(stories_dir)
    n_base = sum(p.numel() for p in base.parameters())
    linears = [m for name, m in base.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in name]
    lora = 16 * sum(m.in_features + m.out_features for m in linears)
    assert rows["lora"][:2] == (lora, n_base + lora)
    assert rows["full"][:2] == (n_base, n_base) and rows["full"][2] == 100.0
    assert rows["prompt"][0] == 16 * base.config.hidden_size  # 16 virtual tokens
    assert rows["qlora"][0] == lora  # same adapter on the 4-bit base, counted by logical size
    assert rows["ia3"][2] == pytest.approx(100 * rows["ia3"][0] / rows["ia3"][1], abs=1e-4)


@pytest.mark.parametrize("name", ["pissa", "olora"])
def test_weight_initialised_lora_starts_at_the_base_model_while_training(stories_dir, name):
    """PiSSA/OLoRA move part of each weight into the adapter; in training mode (dropout active) the model must
    still compute what the base model computes, so their default dropout is 0."""
    from tunesmith.planning.params import method_options

    base = AutoModelForCausalLM.from_pretrained(stories_dir)
    inputs = batch(stories_dir)
    with torch.no_grad():
        expected = base(**inputs).logits
    model = get_method(name).prepare(base, method_options(name), gradient_checkpointing=False)
    model.train()
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, expected, atol=1e-3)
