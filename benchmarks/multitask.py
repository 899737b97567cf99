"""Many tasks on one base: per-task LoRA adapters (an adapter set, routed), one LoRA on the task mixture with task
prefixes, or the per-task adapters merged (`tunesmith merge`: linear, task arithmetic, TIES), against the base.

    python benchmarks/multitask.py --threads 1 --out runs/bench-multitask      # the docs' table (about 25 min)
    python benchmarks/multitask.py --out runs/bench-multitask --reuse          # reuse trained adapters and merges

Tasks (from ../shared/data, split once with --seed; no training run reads a held-out record):
- sentiment: SST-2 phrases as a generation task ("positive"/"negative"); score: exact-match accuracy of the reply's
  first word on --held held-out phrases (higher is better);
- identity: identity.json with the demo's persona filled in; score: share of --identity-held held-out probes whose
  greedy reply names the persona (higher is better);
- alpaca: English Alpaca; score: mean cross-entropy of the reference reply's tokens on --held held-out records
  (lower is better).

Every adapter trains through `tunesmith.recipes.train` (LoRA r16 on all linear layers, the same seed, --steps steps
of batch 4 per task; the mixture adapter --steps x 3 on the three tasks' records with "[task] " prefixes); merges
go through `tunesmith.api.merge`, the diagnosis through `tunesmith.merging.diagnose`. Each option is then served in
its own process (float32): the held-out scores, the peak resident memory of that process (VmHWM: model, adapters
and scoring together) and the latency of one request (batch 1, greedy, exactly --latency-tokens new tokens, median
over --latency-requests prompts drawn from the three tasks; the routed set's includes routing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PERSONA = {"name": "Tuney", "author": "the tunesmith project"}
TASKS = ("sentiment", "identity", "alpaca")
SENTIMENT_PROMPT = "Is the sentiment of this movie review positive or negative? Answer with one word."
MERGES = ("linear", "task_arithmetic", "ties")


# ---------------------------------------------------------------- data


def task_records(args) -> dict[str, tuple[list[dict], list[dict]]]:
    """task -> (train records, held-out records), Alpaca-shaped."""
    rng = random.Random(args.seed)
    lines = (SHARED / "sentiment" / "sst2_train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    phrases = [line.split("\t", 1) for line in lines]
    phrases = [(label, text.strip()) for label, text in phrases if len(text.split()) >= 4]  # a phrase, not a word
    rng.shuffle(phrases)
    sentiment = [{"instruction": SENTIMENT_PROMPT, "input": text, "output": "positive" if label == "1" else "negative"}
                 for label, text in phrases[:args.held + args.samples]]
    text = (SHARED / "instruct" / "identity.json").read_text(encoding="utf-8")
    for key, value in PERSONA.items():
        text = text.replace("{{" + key + "}}", value)
    identity = [r for r in json.loads(text)]
    rng.shuffle(identity)
    # Only probes whose reference reply names the persona are held out: that is what the score checks.
    named = [r for r in identity if PERSONA["name"] in r["output"]][:args.identity_held]
    identity_train = [r for r in identity if r not in named]
    alpaca = json.loads((SHARED / "instruct" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    rng.shuffle(alpaca)
    return {"sentiment": (sentiment[args.held:], sentiment[:args.held]),
            "identity": (identity_train, named),
            "alpaca": (alpaca[args.held:args.held + args.samples], alpaca[:args.held])}


def prefixed(record: dict, task: str) -> dict:
    return {**record, "instruction": f"[{task}] {record['instruction']}"}


def write_data(args, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    records = task_records(args)
    paths = {}
    mixture = []
    for task, (train, held) in records.items():
        for split, rows in (("train", train), ("held", held)):
            paths[f"{task}_{split}"] = folder / f"{task}_{split}.json"
            paths[f"{task}_{split}"].write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        mixture += [prefixed(r, task) for r in train]
    random.Random(args.seed).shuffle(mixture)
    paths["mixture_train"] = folder / "mixture_train.json"
    paths["mixture_train"].write_text(json.dumps(mixture, ensure_ascii=False), encoding="utf-8")
    return paths


# ---------------------------------------------------------------- training and merging


def train_config(args, data: Path, out: Path, steps: int) -> dict:
    config = {
        "model": {"name_or_path": args.model},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "data": {"train": [{"path": str(data)}], "template": args.template, "max_length": args.max_length,
                 "seed": args.seed},
        "training": {"output_dir": str(out), "max_steps": steps, "batch_size": 4, "learning_rate": args.lr,
                     "lr_scheduler": "cosine", "warmup_ratio": 0.05, "logging_steps": 10, "save_steps": 100_000,
                     "tensorboard": False, "overwrite_output_dir": True, "seed": args.seed},
    }
    if args.threads:
        config["speed"] = {"cpu_threads": args.threads}
    return config


def run_worker(kind: str, payload: dict, out: Path) -> dict:
    """One training or one served option in its own process (its peak memory is its own); its last line is JSON."""
    file = out / "configs" / f"{kind}-{payload['name']}.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(payload, ensure_ascii=False))
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, str(file)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {payload['name']!r} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_worker(payload: dict) -> dict:
    from tunesmith.config.loading import validate_config
    from tunesmith.recipes import train

    start = time.perf_counter()
    train(validate_config(payload["config"]))
    return {"seconds": time.perf_counter() - start}


def merge_configs(args, adapters: dict[str, Path], out: Path) -> dict[str, dict]:
    models = [str(adapters[t]) for t in TASKS]
    base = args.model
    return {
        "linear": {"method": "linear", "models": [{"model": m} for m in models], "dtype": "float32",
                   "output": str(out / "merged-linear")},
        "task_arithmetic": {"method": "task_arithmetic", "base_model": base, "dtype": "float32",
                            "models": [{"model": m} for m in models], "output": str(out / "merged-task_arithmetic")},
        "ties": {"method": "ties", "base_model": base, "dtype": "float32",
                 "models": [{"model": m, "density": args.density} for m in models],
                 "output": str(out / "merged-ties")},
    }


def write_manifest(adapters: dict[str, Path], out: Path, model: str) -> Path:
    """The per-task adapters as an adapter set, routed by keyword rules (no classifier to train): a sentiment
    question names its task, identity probes greet or ask about "you" (in English or Chinese: most of identity.json
    is Chinese); everything else is an instruction (alpaca)."""
    import yaml

    from tunesmith.models.reference import resolve_ref

    manifest = {
        "base": resolve_ref(model), "default": "alpaca",
        "adapters": {task: str(adapters[task].resolve()) for task in TASKS},
        "router": {"rules": [{"adapter": "sentiment", "keywords": ["sentiment"]},
                             {"adapter": "identity", "regex": r"^\W*(hi|hello|hey|thanks)\W*$|"
                                                              r"\b(are|who|what|do|tell|introduce)\b[^.?!]{0,20}"
                                                              r"\b(you|your|yourself)\b|你|您|嗨|谢谢|下午好"}],
                   "fallback": "alpaca"},
    }
    path = out / "tasks.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------- serving one option


def conversations(records: list[dict], task: str | None = None) -> list[list[dict]]:
    """Alpaca records as chats; `task`: the mixture adapter's "[task] " prefix."""
    chats = []
    for record in records:
        record = prefixed(record, task) if task else record
        user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        chats.append([{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}])
    return chats


class Served:
    """One option loaded as it would be served: `generate` and `loss` take one task's conversations."""

    def __init__(self, option: dict):
        from tunesmith.models.loading import load_for_inference

        self.option = option
        self.routes: list[tuple[str, str]] = []  # (true task, routed adapter)
        if option["kind"] == "set":
            from tunesmith.inference.adapter_set import load_adapter_set
            from tunesmith.inference.generation import Generator

            self.set = load_adapter_set(option["ref"], dtype="float32")
            self.loaded = self.set.loaded()
            self.generator = Generator(self.loaded, self.set)
        else:
            from tunesmith.inference.generation import Generator

            self.set = None
            self.loaded = load_for_inference(option["ref"], dtype="float32", template=option["template"])
            self.generator = Generator(self.loaded)
        self.tokenizer = self.loaded.tokenizer

    def prepare(self, chats: list[list[dict]], task: str, record: bool = True
                ) -> tuple[list[list[dict]], list[str | None]]:
        """The conversations as this option gets them, and the adapter each goes to (routed for the set; `record`:
        count the routes in the router's accuracy)."""
        if self.option.get("prefix"):
            chats = [[{**c[0], "content": f"[{task}] {c[0]['content']}"}, *c[1:]] for c in chats]
        if self.set is None:
            return chats, [None] * len(chats)
        routes = self.set.router.route_many([c[:1] for c in chats])
        if record:
            self.routes += [(task, r.adapter) for r in routes]
        return [[*r.messages, *c[1:]] for r, c in zip(routes, chats)], [r.adapter for r in routes]

    def generate(self, chats, task: str, max_new_tokens: int) -> list[str]:
        from tunesmith.inference.generation import SamplingOptions

        chats, adapters = self.prepare(chats, task)
        answers = []
        for start in range(0, len(chats), 8):
            batch = [c[:1] for c in chats[start:start + 8]]
            names = adapters[start:start + 8] if self.set is not None else None
            answers += self.generator.generate(batch, SamplingOptions(max_new_tokens=max_new_tokens), adapters=names)
        return answers

    def loss(self, chats, task: str, max_length: int) -> float:
        from tunesmith.evaluation.metrics.perplexity import conversation_examples, score_examples

        chats, adapters = self.prepare(chats, task)
        nll = tokens = 0.0
        for name in dict.fromkeys(adapters):
            group = [c for c, a in zip(chats, adapters) if a == name]
            template = self.generator.template_for(name)
            examples = conversation_examples(self.tokenizer, template, group, max_length)
            if self.set is not None:
                with self.set.using([name]):
                    scores = score_examples(self.loaded.model, examples, pad_id=self.tokenizer.pad_token_id)
            else:
                scores = score_examples(self.loaded.model, examples, pad_id=self.tokenizer.pad_token_id)
            nll += scores["loss"] * scores["tokens"]
            tokens += scores["tokens"]
        return nll / tokens

    def latency(self, chats: list[tuple[str, list[dict]]], new_tokens: int) -> float:
        """Median seconds for one request of exactly `new_tokens` greedy tokens (routing included)."""
        import torch

        times = []
        for task, chat in chats:
            start = time.perf_counter()
            (chat,), (name,) = self.prepare([chat], task, record=False)
            template = self.generator.template_for(name)
            inputs = self.tokenizer([template.render_prompt(chat[:1])], return_tensors="pt", add_special_tokens=False)
            context = self.set.using([name]) if self.set is not None else nullcontext({})
            with torch.inference_mode(), context:
                output = self.loaded.model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens,
                                                    min_new_tokens=new_tokens,
                                                    pad_token_id=self.tokenizer.pad_token_id)
            if output.shape[1] - inputs["input_ids"].shape[1] != new_tokens:
                raise RuntimeError("generation stopped early: the latency would not be per fixed token count")
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def first_word(text: str) -> str:
    words = text.strip().lower().replace(".", " ").replace(",", " ").split()
    return words[0] if words else ""


def serve_worker(payload: dict) -> dict:
    from sft_throughput import peak_rss_mb  # this folder is on sys.path when a script here runs

    import torch

    if payload.get("threads"):
        torch.set_num_threads(payload["threads"])
    start = time.perf_counter()
    served = Served(payload["option"])
    load_s = time.perf_counter() - start
    data = {task: json.loads(Path(payload["data"][task]).read_text(encoding="utf-8")) for task in TASKS}
    scores = {}
    answers = served.generate(conversations(data["sentiment"]), "sentiment", 3)
    scores["sentiment"] = sum(first_word(a) == r["output"] for a, r in zip(answers, data["sentiment"])) / len(answers)
    answers = served.generate(conversations(data["identity"]), "identity", 32)
    scores["identity"] = sum(PERSONA["name"].lower() in a.lower() for a in answers) / len(answers)
    scores["alpaca"] = served.loss(conversations(data["alpaca"]), "alpaca", payload["max_length"])
    picks = [(task, c) for task in TASKS for c in conversations(data[task][:payload["latency_requests"]])]
    picks = [picks[i] for i in random.Random(0).sample(range(len(picks)), payload["latency_requests"])]
    latency = served.latency(picks, payload["latency_tokens"])
    routed = None
    if served.set is not None:
        routed = {task: sum(t == task and a == task for t, a in served.routes) / sum(t == task for t, _ in served.routes)
                  for task in TASKS}
        routed["all"] = sum(t == a for t, a in served.routes) / len(served.routes)
    return {"scores": scores, "latency_s": latency, "load_s": load_s, "peak_mib": peak_rss_mb(), "routed": routed,
            "sample": answers[:2]}


# ---------------------------------------------------------------- the report


def gain_kept(scores: dict, base: dict, best: dict) -> dict[str, float]:
    """Per task: the share of the per-task adapter's improvement over the base that an option keeps (loss: lower)."""
    kept = {}
    for task in TASKS:
        gain = best[task] - base[task]
        kept[task] = (scores[task] - base[task]) / gain if abs(gain) > 1e-9 else float("nan")
    return kept


def report(args, results: dict, diagnosis, seconds: dict, routed_accuracy: dict) -> str:
    from tunesmith.merging.diagnose import summary_line
    from tunesmith.hardware import cpu_model

    base, best = results["base"]["scores"], results["per-task adapters (routed)"]["scores"]
    lines = [f"conditions: {args.model}, LoRA r16 all-linear, {args.steps} steps x batch 4 per task (mixture "
             f"{3 * args.steps}), lr {args.lr}, max_length {args.max_length}, seed {args.seed}; train records: "
             f"sentiment {args.samples}, identity {results['_identity_train']}, alpaca {args.samples}; held out: "
             f"sentiment {args.held}, identity {args.identity_held}, alpaca {args.held}; TIES density "
             f"{args.density}; {args.threads or 'all'} thread(s), {cpu_model()}, "
             f"{platform.machine()}",
             "training: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), "",
             "| option | sentiment acc | identity named | alpaca loss | worst gain kept | peak RSS MiB | "
             "latency ms/request |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        s = r["scores"]
        kept = gain_kept(s, base, best)
        worst = "-" if name == "base" else f"{100 * min(kept.values()):.0f}%"
        lines.append(f"| {name} | {s['sentiment']:.1%} | {s['identity']:.1%} | {s['alpaca']:.3f} | {worst} | "
                     f"{r['peak_mib']:,.0f} | {1000 * r['latency_s']:.0f} |")
    lines += ["", f"latency: batch 1, greedy, exactly {args.latency_tokens} new tokens, median of "
                  f"{args.latency_requests} requests; peak RSS: the serving process while loaded and scoring",
              "router (keyword rules) accuracy on the held-out prompts: "
              + ", ".join(f"{k} {v:.0%}" for k, v in routed_accuracy.items()),
              "gain kept: (option - base) / (per-task adapter - base) per task (alpaca: on the loss); "
              "worst over the three tasks", "",
              "diagnosis of the per-task adapters: " + summary_line(diagnosis)]
    w = diagnosis.whole
    labels = diagnosis.labels
    pairs = ", ".join(f"{labels[i]}/{labels[j]} {w.cosine[i][j]:.3f}" for i in range(len(labels))
                      for j in range(i + 1, len(labels)))
    lines.append(f"  cosines {pairs}; norms " + ", ".join(f"{label} {n:.3g}" for label, n in zip(labels, w.norms))
                 + f"; overlap of kept coordinates {w.overlap:.0%}")
    merged = {m: results[f"merged: {m}"]["scores"] for m in MERGES}
    worst = {m: min(gain_kept(s, base, best).values()) for m, s in merged.items()}
    winner = max(worst, key=worst.get)
    measured = winner if worst[winner] >= args.min_kept else "keep_apart"
    rec = diagnosis.recommendation.method
    lines.append(f"measured: best merge {winner} keeps {worst[winner]:.0%} of the worst task's gain "
                 f"({'≥' if worst[winner] >= args.min_kept else '<'} {args.min_kept:.0%}) → {measured}; "
                 f"diagnosis recommended {rec}: {'match' if rec == measured else 'MISMATCH'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=40, help="training steps per task (the mixture: 3x)")
    parser.add_argument("--samples", type=int, default=200, help="training records for sentiment and alpaca")
    parser.add_argument("--held", type=int, default=40, help="held-out records for sentiment and alpaca")
    parser.add_argument("--identity-held", type=int, default=16, help="held-out identity probes")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--template", default="model", help="chat template of training and serving")
    parser.add_argument("--density", type=float, default=0.5, help="TIES' and the diagnosis' kept share")
    parser.add_argument("--min-kept", type=float, default=0.8,
                        help="a merge 'works' when it keeps this share of every task's gain")
    parser.add_argument("--latency-tokens", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 on a machine other jobs share)")
    parser.add_argument("--out", default="runs/bench-multitask")
    parser.add_argument("--reuse", action="store_true", help="keep trained adapters and merges already in --out")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, file = args.worker
        payload = json.loads(Path(file).read_text(encoding="utf-8"))
        print(json.dumps(train_worker(payload) if kind == "train" else serve_worker(payload)))
        return
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    out = Path(args.out).resolve()
    paths = write_data(args, out / "data")
    adapters = {name: out / "runs" / name for name in (*TASKS, "mixture")}
    seconds = {}
    for name, folder in adapters.items():
        if args.reuse and (folder / "adapter_model.safetensors").is_file():
            continue
        steps = 3 * args.steps if name == "mixture" else args.steps
        config = train_config(args, paths[f"{name}_train"], folder, steps)
        seconds[name] = run_worker("train", {"name": name, "config": config}, out)["seconds"]

    from tunesmith import api
    from tunesmith.merging import parse_config
    from tunesmith.merging.diagnose import diagnose

    configs = merge_configs(args, adapters, out)
    diagnosis = diagnose(parse_config(configs["ties"]), density=args.density)
    for method, config in configs.items():
        if not (args.reuse and (Path(config["output"]) / "config.json").is_file()):
            start = time.perf_counter()
            api.merge(config, overwrite=True)
            seconds[f"merge {method}"] = time.perf_counter() - start
    manifest = write_manifest(adapters, out, args.model)

    options = {"base": {"kind": "model", "ref": args.model},
               "per-task adapters (routed)": {"kind": "set", "ref": str(manifest)},
               "mixture adapter (prefixes)": {"kind": "model", "ref": str(adapters["mixture"]), "prefix": True},
               **{f"merged: {m}": {"kind": "model", "ref": configs[m]["output"]} for m in MERGES}}
    for option in options.values():
        option["template"] = args.template
    held = {task: str(paths[f"{task}_held"]) for task in TASKS}
    results: dict = {"_identity_train": len(json.loads(paths["identity_train"].read_text(encoding="utf-8")))}
    for name, option in options.items():
        payload = {"name": name.replace(" ", "_").replace(":", "").replace("(", "").replace(")", ""),
                   "option": option, "data": held, "max_length": args.max_length, "threads": args.threads,
                   "latency_tokens": args.latency_tokens, "latency_requests": args.latency_requests}
        results[name] = run_worker("serve", payload, out)
        print(f"{name}: {results[name]['scores']} ({results[name]['latency_s'] * 1000:.0f} ms/request)", flush=True)
    routed = results["per-task adapters (routed)"]["routed"]
    text = report(args, results, diagnosis, seconds, routed)
    (out / "report.md").write_text(text + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"results": results, "diagnosis": diagnosis.to_dict()},
                                                 indent=1, default=str), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
