"""`tunesmith export RUN --gguf TYPE`: the GGUF file (read back with gguf-py, and run by llama.cpp through
llama-cpp-python when it is installed) and the Ollama Modelfile beside it.

Fast tests use stories260K (a real tiny Llama with a SentencePiece-style tokenizer) and tiny random models of each
architecture; the slow one trains a LoRA run, exports f16 / q8_0 / q4_k_m and compares llama.cpp with transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tunesmith.cli.main import main
from tunesmith.data.templates.registry import get_template
from tunesmith.errors import ConfigError
from tunesmith.inference.ollama import TemplateNotDerivable, derive_turn_pieces, go_template
from tunesmith.models import gguf_write
from tunesmith.models.gguf_write import hf_folder_to_gguf

from .conftest import RecordingReporter
from .test_gguf import CHAT_TEMPLATE

gguf = pytest.importorskip("gguf")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

try:
    import llama_cpp  # noqa: F401

    HAVE_LLAMA_CPP = True
except ImportError:
    HAVE_LLAMA_CPP = False
needs_llama_cpp = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed")

SMOL_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                 "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
                 "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CONVERSATION = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What did Tom see?"}]


def _reader_field(reader, key):
    field = reader.fields[key]
    return field.contents()


# ------------------------------------------------------------------------------ chat templates (fast)

@pytest.mark.parametrize("name", ["chatml", "alpaca_en", "alpaca_zh"])
def test_tunesmith_templates_as_jinja_render_the_same(stories_dir, name):
    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    template = get_template(name, tokenizer)
    jinja = template.jinja()
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[1:2]):
        got = tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False, add_generation_prompt=True)
        assert got == template.render_prompt(messages)
    whole = CONVERSATION[1:3]
    assert tokenizer.apply_chat_template(whole, chat_template=jinja, tokenize=False) == template.render(whole).text


@pytest.mark.parametrize("name,jinja", [("chatml", None), ("alpaca_en", None), ("model", CHAT_TEMPLATE),
                                        ("model", SMOL_TEMPLATE)])
def test_ollama_template_pieces_reproduce_the_template(stories_dir, name, jinja):
    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    tokenizer.chat_template = jinja
    template = get_template(name, tokenizer)
    pieces = derive_turn_pieces(template)  # checks a longer conversation itself
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[1:2]):
        assert pieces.render(messages) == template.render_prompt(messages)
    go = go_template(pieces)
    assert "{{ .Content }}" in go and "range $i, $_ := .Messages" in go and '"""' not in go
    assert json.dumps(pieces.user_end, ensure_ascii=False) in go
    if jinja == SMOL_TEMPLATE:  # the default system prompt only when the conversation has none
        assert "You are a helpful AI assistant" in pieces.start_user
        assert "You are a helpful AI assistant" not in pieces.start_system


def test_ollama_template_refuses_what_it_cannot_express(stories_dir):
    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    tokenizer.chat_template = ("{% for m in messages %}[{{ loop.index }}] {{ m['role'] }}: {{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    with pytest.raises(TemplateNotDerivable):
        derive_turn_pieces(get_template("model", tokenizer))


# -------------------------------------------------------------------- the GGUF file itself (fast, gguf-py)

def test_stories260k_gguf_metadata_tokens_and_weights(stories_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(stories_dir)
    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    seen, notes = [], []
    f32 = hf_folder_to_gguf(stories_dir, tmp_path / "s.gguf", "f32", chat_template="{{ 'x' }}", on_tensor=seen.append,
                            notes=notes)
    assert len(notes) == 1 and "Replace ' {2,}'" in notes[0]  # its space-collapsing rule, which llama.cpp lacks
    reader = gguf.GGUFReader(f32)
    assert _reader_field(reader, "general.architecture") == "llama"
    assert _reader_field(reader, "tokenizer.ggml.model") == "llama"
    assert _reader_field(reader, "tokenizer.chat_template") == "{{ 'x' }}"
    assert _reader_field(reader, "tokenizer.ggml.add_bos_token") is True
    assert _reader_field(reader, "tokenizer.ggml.tokens") == [tokenizer.convert_ids_to_tokens(i) for i in range(512)]
    assert _reader_field(reader, "llama.attention.head_count_kv") == 4
    tensors = {t.name: t for t in reader.tensors}
    assert len(seen) == len(tensors) == 2 + 9 * 5  # tied: no output.weight
    hf = model.state_dict()
    emb = np.array(tensors["token_embd.weight"].data)
    assert np.array_equal(emb, hf["model.embed_tokens.weight"].numpy())
    # q/k rows are reordered for llama.cpp's interleaved RoPE; undoing it gives HF's matrix back, v is untouched
    q = np.array(tensors["blk.0.attn_q.weight"].data)
    assert not np.array_equal(q, hf["model.layers.0.self_attn.q_proj.weight"].numpy())
    undone = q.reshape(8, 4, 2, 64).swapaxes(1, 2).reshape(64, 64)
    assert np.array_equal(undone, hf["model.layers.0.self_attn.q_proj.weight"].numpy())
    assert np.array_equal(np.array(tensors["blk.0.attn_v.weight"].data),
                          hf["model.layers.0.self_attn.v_proj.weight"].numpy())

    q8 = gguf.GGUFReader(hf_folder_to_gguf(stories_dir, tmp_path / "q8.gguf", "q8_0"))
    types = {t.name: t.tensor_type.name for t in q8.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.ffn_down.weight"] == "F16"  # 172 columns: not a whole number of 32-value blocks
    t = next(t for t in q8.tensors if t.name == "blk.0.ffn_up.weight")
    back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(172, 64)
    assert np.abs(back - hf["model.layers.0.mlp.up_proj.weight"].numpy()).max() < 0.01


def test_gguf_errors_are_clear(tiny_model_factory, tmp_path):
    with pytest.raises(ConfigError, match="unknown GGUF type 'q3_xx'") as info:
        gguf_write.check_gguf_type("q3_xx")
    assert "q4_k_m" in str(info.value)
    with pytest.raises(ConfigError, match="does not support the architecture GPT2LMHeadModel"):
        hf_folder_to_gguf(tiny_model_factory("gpt2"), tmp_path / "g.gguf", "f16")


def test_k_quant_without_llama_cpp_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_llama_cpp(name, *args, **kwargs):
        if name == "llama_cpp":
            raise ImportError("no llama_cpp")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llama_cpp)
    with pytest.raises(ConfigError, match="needs llama.cpp's quantizer") as info:
        gguf_write.quantize_gguf(tmp_path / "a.gguf", tmp_path / "b.gguf", "q4_k_m")
    assert "pip install llama-cpp-python" in str(info.value)


@pytest.mark.parametrize("argv,message", [
    (["--gguf", "q3_xx"], "unknown GGUF type"),
    (["--gguf", "f16"], "run folder not found"),
])
def test_cli_bad_input_exits_2_without_traceback(tmp_path, capsys, argv, message):
    code = main(["export", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_cli_refuses_an_unsupported_architecture_before_merging(tiny_model_factory, tmp_path, capsys, monkeypatch):
    import shutil

    import tunesmith.inference.export as export

    run = tmp_path / "gpt2-run"
    shutil.copytree(tiny_model_factory("gpt2"), run)
    (run / "tunesmith_run.json").write_text(json.dumps({
        "artifact": "full", "base_model": {"name_or_path": str(run)}, "method": {"name": "full"}, "template": "auto"}))
    monkeypatch.setattr(export, "export_run", lambda *a, **k: pytest.fail("merged before refusing"))
    assert main(["export", str(run), "--gguf", "f16", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "does not support the architecture GPT2LMHeadModel" in err and "LlamaForCausalLM" in err
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------- llama.cpp runs what was written (llama-cpp-python)

def _llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    from tunesmith.inference.gguf_check import _llama_logits, load_llama

    llm = load_llama(path, n_ctx=64, threads=2)
    try:
        return _llama_logits(llm, ids)
    finally:
        llm.close()


def _tiny(arch: str, tmp_path: Path, stories_dir: Path) -> Path:
    from transformers import GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
    config = {"llama": lambda: LlamaConfig(**common, tie_word_embeddings=False),
              "llama3-rope": lambda: LlamaConfig(**common, rope_parameters={
                  "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
              "mistral": lambda: MistralConfig(**common, sliding_window=None),
              "qwen2": lambda: Qwen2Config(**common, tie_word_embeddings=True),
              "gemma": lambda: GemmaConfig(**common, head_dim=32)}[arch]()  # head_dim != hidden / heads, as in Gemma 7B
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random biases too, so a dropped or misplaced bias shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / arch
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(stories_dir).save_pretrained(folder)
    return folder


@needs_llama_cpp
@pytest.mark.parametrize("arch", ["llama", "llama3-rope", "mistral", "qwen2", "gemma"])
def test_llama_cpp_reproduces_transformers_logits(arch, tmp_path, stories_dir):
    folder = _tiny(arch, tmp_path, stories_dir)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    path = hf_folder_to_gguf(folder, tmp_path / f"{arch}.gguf", "f32")
    ids = AutoTokenizer.from_pretrained(folder)("Once upon a time, Tom saw a big red ball.").input_ids
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    got = _llama_logits(path, ids)
    assert np.abs(ref - got).max() < 2e-3 * max(1.0, np.abs(ref).max()), arch
    assert (ref.argmax(1) == got.argmax(1)).all()


@needs_llama_cpp
def test_llama_cpp_tokenises_like_the_hf_tokenizer(stories_dir, tmp_path):
    from tunesmith.inference.gguf_check import load_llama

    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    llm = load_llama(hf_folder_to_gguf(stories_dir, tmp_path / "s.gguf", "f16"), n_ctx=64, threads=2)
    texts = ["Once upon a time, there was a little girl named Lily.", "Tom's dog ran to the park! Why?",
             "She said: \"I can't find 123 apples.\"", "zebra xylophone quietly jumped", "a\nb\n\nc"]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text).input_ids, text
    llm.close()


def _byte_level_folder(tmp_path: Path, pre: str) -> Path:
    """A tiny random Llama with a byte-level BPE tokenizer trained here, split as `pre` (llama.cpp's name) does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [line.strip() for line in (Path(__file__).parent / "test_gguf_export.py").read_text().splitlines()]
    tok.train_from_iterator(corpus * 3 + ["12345 67890 I'LL we'd  you're\n\n\tx"] * 5, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    split = {"gpt-2": None, "smollm": pre_tokenizers.Digits(individual_digits=True),
             "llama-bpe": pre_tokenizers.Split(Regex(next(r for r, n in gguf_write._SPLIT_REGEXES.items()
                                                          if n == "llama-bpe")), "isolated"),
             "qwen2": pre_tokenizers.Split(Regex(next(r for r, n in gguf_write._SPLIT_REGEXES.items()
                                                      if n == "qwen2")), "isolated")}[pre]
    level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre in ("gpt-2", "smollm"))
    tok.pre_tokenizer = level if split is None else pre_tokenizers.Sequence([split, level])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", unk_token="<|endoftext|>")
    folder = tmp_path / pre
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=1, num_attention_heads=2)).save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return folder


@needs_llama_cpp
@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_byte_level_pre_tokenizers_split_like_llama_cpp(tmp_path, pre):
    from tunesmith.inference.gguf_check import load_llama

    folder = _byte_level_folder(tmp_path, pre)
    path = hf_folder_to_gguf(folder, tmp_path / "b.gguf", "f32")
    assert _reader_field(gguf.GGUFReader(path), "tokenizer.ggml.pre") == pre
    tokenizer = AutoTokenizer.from_pretrained(folder)
    llm = load_llama(path, n_ctx=64, threads=2)
    texts = ["In 2024 we paid 1234567 dollars.", "I'LL say you're right, they'd agree", "a  b   c\n\n\td",
             "<|im_start|>user\nhello<|im_end|>\n", "naïve café — 東京 🙂 x=y+1;"]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(text).input_ids, (pre, text)
    llm.close()


# ------------------------------------------------------------------------ a trained run, end to end (slow)

@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, stories_dir):
    from tunesmith.recipes import train

    from .test_training import make_config

    run = tmp_path_factory.mktemp("gguf-run") / "run"
    train(make_config(stories_dir, run, max_steps=3, batch_size=4, learning_rate=5e-3, data={"template": "chatml"}))
    return run


def test_cli_exports_q8_0_with_modelfile(lora_run, tmp_path, capsys):
    out = tmp_path / "q8"
    assert main(["export", str(lora_run), "--gguf", "q8_0", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "run-q8_0.gguf"]
    reader = gguf.GGUFReader(out / "run-q8_0.gguf")
    assert "<|im_start|>" in _reader_field(reader, "tokenizer.chat_template")  # the run's template, not the base's
    text = (out / "Modelfile").read_text()
    assert text.splitlines()[1] == "FROM ./run-q8_0.gguf"
    assert 'TEMPLATE """' in text and '{{ "<|im_end|>\\n<|im_start|>assistant\\n" }}' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER num_ctx 512" in text
    assert "exported" in capsys.readouterr().err
    assert main(["export", str(lora_run), "--gguf", "f16", "--out", str(out)]) == 2  # not empty: refused


@pytest.mark.slow
@needs_llama_cpp
def test_exported_run_in_llama_cpp_matches_transformers(lora_run, tmp_path):
    import tunesmith
    from tunesmith.inference.export import export_run
    from tunesmith.inference.gguf_check import compare, reference

    merged = export_run(str(lora_run), str(tmp_path / "merged"), merge=True)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    template = get_template("chatml", tokenizer)
    prompts = ["Once upon a time", "Tom and Lily went to the park. They saw",
               template.render_prompt([{"role": "user", "content": "Tell me what Mia saw."}])]
    refs = reference(model, tokenizer, prompts, new_tokens=24)
    results = {}
    for kind in ("f16", "q8_0", "q4_k_m"):
        reporter = RecordingReporter()
        exported = tunesmith.export_gguf(lora_run, tmp_path / kind, kind, reporter=reporter)
        assert exported.gguf.name == f"run-{kind}.gguf" and exported.modelfile.is_file()
        assert "merging the run" in reporter.text() and ("quantising to q4_k_m" in reporter.text()) == (kind == "q4_k_m")
        assert list(reporter.advanced.values()) == [47]  # one step per tensor of stories260K
        results[kind] = compare(exported.gguf, refs, tokenizer)
        assert all(r.same_tokens for r in results[kind]), kind
    assert all(r.same_greedy for r in results["f16"]), [(r.hf_text, r.gguf_text) for r in results["f16"]]
    assert min(r.top1 for r in results["f16"]) >= 0.98  # f16 rounding may flip an exact near-tie somewhere
    assert np.mean([r.top1 for r in results["q8_0"]]) >= 0.95
    assert np.mean([r.top1 for r in results["q4_k_m"]]) >= 0.7
    assert np.mean([r.kl for r in results["q4_k_m"]]) > np.mean([r.kl for r in results["q8_0"]])


# ------------------------------------------------- the Modelfile's TEMPLATE, run by Go's text/template (as Ollama)

GO_RENDER = r"""
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Case struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	var out []string
	for _, c := range cases {
		t := template.Must(template.New("").Option("missingkey=zero").Parse(c.Template))
		var b strings.Builder
		if err := t.Execute(&b, map[string]any{"Messages": c.Messages}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


@pytest.mark.skipif(__import__("shutil").which("go") is None, reason="Go is not installed (apt install golang-go)")
def test_modelfile_template_in_go_renders_what_the_chat_template_does(stories_dir, tmp_path):
    import subprocess

    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    conversations = [CONVERSATION, CONVERSATION[1:], CONVERSATION[1:2], CONVERSATION[:2],
                     CONVERSATION[1:] + [{"role": "assistant", "content": "Tom saw a cat."},
                                         {"role": "user", "content": "And then?"}]]
    cases, expected = [], []
    for name, jinja in [("chatml", None), ("alpaca_en", None), ("alpaca_zh", None), ("model", CHAT_TEMPLATE),
                        ("model", SMOL_TEMPLATE)]:
        tokenizer.chat_template = jinja
        template = get_template(name, tokenizer)
        go = go_template(derive_turn_pieces(template))
        for messages in conversations:
            cases.append({"template": go, "messages": messages})
            expected.append(template.render_prompt(messages))
    (tmp_path / "render.go").write_text(GO_RENDER)
    proc = subprocess.run(["go", "run", str(tmp_path / "render.go")], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "GOFLAGS": "-mod=mod"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == expected


@pytest.mark.slow
@needs_llama_cpp
def test_agreement_benchmark_prints_its_table(stories_dir, tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gguf_agreement.py"
    proc = subprocess.run([sys.executable, str(script), "--model", str(stories_dir), "--types", "f16,q4_k_m",
                           "--new-tokens", "8", "--threads", "2"], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| f16") or line.startswith("| q4_k_m")}
    # identical greedy, all greedy tokens and top-1 everywhere (the fibonacci prompt's run of spaces is tokenised
    # differently: stories260K's tokenizer collapses spaces, llama.cpp does not; both engines get the HF ids)
    assert rows["f16"][3:6] == ["2/2", "100.0%", "100.0%"], proc.stdout
    assert set(rows) == {"f16", "q4_k_m"}


@pytest.mark.slow
@needs_llama_cpp
def test_smollm2_f16_gguf_in_llama_cpp_gives_transformers_greedy_text(tmp_path):
    """The issue's real model: SmolLM2-135M-Instruct (offline from PyPI) exported to f16 and run in llama.cpp gives
    transformers' greedy tokens on every prompt of the agreement benchmark, chat-templated ones included."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gguf_agreement.py"
    proc = subprocess.run([sys.executable, str(script), "--types", "f16", "--new-tokens", "8", "--threads", "2"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| f16"))
    cells = [c.strip() for c in row.split("|")[2:-1]]
    same_tokens, identical, agreeing, top1 = cells[2], cells[3], cells[4], cells[5]
    assert same_tokens == identical == "10/10" and agreeing == top1 == "100.0%", proc.stdout
