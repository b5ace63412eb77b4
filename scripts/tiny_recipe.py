"""The offline tiny recipe: proof on a laptop CPU, in minutes and with no download, that GRPO learns.

    python scripts/tiny_recipe.py                  # everything under runs/tiny (~6.5-7 minutes on one CPU core)
    python scripts/tiny_recipe.py --quick          # a shortened run (~60-70 s), what tests/test_tiny_recipe.py runs
    python train.py --config configs/tiny.yaml     # afterwards: the GRPO stage on its own
    python scripts/tiny_recipe.py --quick --tools  # the calculator variant (runs/tiny-quick-tools)

Stages (each is skipped when its output already exists, so an interrupted run just continues):

  1. tokenizer  a 1024-token byte-level BPE (Qwen's pre-tokenizer, special tokens and ChatML chat
                template) trained with `tokenizers` on GSM8K text (datasets/gsm8k/train.jsonl when
                download.py fetched it, else the fixture in tests/fixtures/gsm8k), synthetic problems
                and the system prompts, so a chat prompt is ~70 tokens instead of ~250 bytes
  2. init       a random ~1M-parameter Qwen2 (4 layers, width 128, grouped-query attention, tied
                embeddings) saved as a Hugging Face checkpoint: `<out>/init`
  3. data       synthetic word problems (data/synthetic.py) in GSM8K's JSONL format: a training file
                and a held-out file whose questions never occur in training: `<out>/data`
  4. sft        scripts/sft.py, a short supervised warm start on the training file, stopped early
                (held-out accuracy ~30-40%) so GRPO has room to improve and reward variance to learn
                from: `<out>/sft`
  5. eval       held-out accuracy of the SFT model (grpo.evaluate): greedy, as train.py evaluates,
                and mean@8 (8 seeded samples per question at the rollout temperature)
  6. grpo       the real train.py with configs/tiny.yaml, model.path = the SFT model: `<out>/grpo`
  7. eval       the same held-out evaluation of the last GRPO checkpoint
  8. report     a before/after table, `<out>/results.json`, and `<out>/curve.png` (scripts/plot.py)

The problems are the synthetic "mul" kind ("Tom has 7 boxes with 8 pens in each box. How many pens
does Tom have?" -> <think>7 * 8 = 56</think> <answer>56</answer>). A 1M-parameter model learns the
format and which numbers to copy within a few dozen SFT steps, and the multiplication facts in a few
hundred; multi-digit addition and subtraction (the other kinds) take it tens of minutes of SFT to pass
20%, far beyond a laptop budget. Held-out questions share the facts (7 * 8) with training questions,
never the question text: GRPO must make the model produce right products more often, and the reward
it optimises is the GSM8K reward of train.py (format 0.1 + correctness 1.0), nothing tiny-specific.

--tools is the same recipe with a calculator (grpo/tools.py) in Qwen2.5's tool-call format: the
tokenizer also learns the template's tool texts, the SFT examples call the calculator once
("<tool_call>{... "7 * 8"}</tool_call>", the answer comes back as a tool message) before the
final answer, and GRPO and the evaluations offer it (rollout.tools: [calculator]). Model, data, SFT
stopping rule, GRPO settings and the model's token budget (rollout.max_new_tokens counts the model's
tokens, not the tool's; 64 instead of 40, for the call) are those of the plain recipe, so the two
compare on the same held-out questions (run the plain one with --set rollout.max_new_tokens=64).

Everything is seeded (--seed): data, initial weights, SFT batches and the GRPO sampler, so two runs
with the same seed, thread count and torch build print the same numbers. The model, tokenizer and
training loop are the project's own; the recipe only chooses sizes.
Simplifications: one problem kind, a tiny model, CPU only (fp32), few steps: a demonstration that the
loop optimises the reward, not a GSM8K result.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

import plot  # scripts/plot.py
import sft  # scripts/sft.py
import train  # train.py: the real GRPO entry point
from data.gsm8k import calculations, load_gsm8k
from data.prompts import TEMPLATES, build_messages, template_tags
from data.rewards import format_reward
from data.synthetic import KINDS, format_completion, make_problems, write_jsonl
from grpo.machinery.checkpoint import latest_checkpoint, list_checkpoints
from grpo.config import load_config
from grpo.evaluate import evaluate
from grpo.tools import call_text, tool_specs
from qwen2 import Qwen2, Qwen2Config, Tokenizer, save_model
from qwen2.lora import load_adapted_model
from qwen2.bpe_trainer import train_bpe_tokenizer
from qwen2.errors import InputError, run_command

ROOT = Path(__file__).resolve().parents[1]

CONFIG = ROOT / "configs" / "tiny.yaml"
GSM8K_TRAIN = ROOT / "datasets" / "gsm8k" / "train.jsonl"
GSM8K_FIXTURE = ROOT / "tests" / "fixtures" / "gsm8k" / "train_sample.jsonl"

# Sizes of the full recipe and of --quick (the test). Anything GRPO-related lives in configs/tiny.yaml;
# --quick uses a smaller model and data and shortens GRPO with --set overrides.
FULL = dict(
    vocab_size=1024,
    model=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2),
    kinds=("mul",),
    n_train=6000,  # of the ~7000 distinct "mul" training questions
    n_test=500,  # held-out questions (the "test" split of data/synthetic.py)
    # Constant learning rate after warmup, stopped mid-way on purpose, as soon as greedy accuracy on
    # 128 training questions reaches 35% (~400 steps): sampled answers are then right often enough
    # for GRPO to have something to reinforce, and every seed and data order starts from a
    # comparable point (a fixed step count gave 23-37% held-out, depending on the batch order).
    sft=dict(steps=1000, batch_size=16, lr=2e-3, warmup_steps=20, min_lr_ratio=1.0, stop_at_accuracy=0.35,
             check_every=25, check_size=128),
    grpo=[],  # --set overrides of configs/tiny.yaml
)
QUICK = dict(
    FULL,
    # 0.26M parameters: learns the facts about as fast per step as the full model at ~1/3 of the cost.
    model=dict(hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=2,
               num_key_value_heads=1),
    n_train=3000,
    n_test=200,
    # Stopped as soon as greedy accuracy on 128 training questions reaches 30% (~600-700 steps,
    # depending on the seed), so every seed starts GRPO from a comparable point.
    sft=dict(steps=1500, batch_size=8, lr=3e-3, warmup_steps=20, min_lr_ratio=1.0, stop_at_accuracy=0.3,
             check_every=50, check_size=128),
    grpo=["train.steps=80", "rollout.prompts_per_step=12", "train.eval_every=0", "train.save_every=80"],
)

# --tools: the calculator offered, and room for one call. A call costs the model ~23 tokens of its
# budget (Qwen's pre-tokenizer splits the JSON into ~15 pieces whatever the vocabulary) on top of the
# ~22 of the answer; the plain recipe's 40 would truncate every answer. Compare with the plain recipe
# at the same budget: --set rollout.max_new_tokens=64 (docs/tiny_recipe.md).
TOOLS_GRPO = ["rollout.tools=[calculator]", "rollout.max_new_tokens=64"]


def log(msg: str) -> None:
    print(f"[tiny] {msg}", flush=True)


# -- stages -------------------------------------------------------------------------------------


CORPUS_TEMPLATES = ("think", "reasoning", "chinese")  # the prompts the tokenizer learns (the recipe's choices)


def tokenizer_corpus(seed: int, gsm8k_file: Path) -> list[str]:
    """Texts the BPE is trained on: GSM8K, synthetic problems of every kind, the prompt texts."""
    texts = []
    for p in load_gsm8k(gsm8k_file):
        texts += [p.question, p.solution]
    for p in make_problems(2000, seed=seed, kinds=KINDS):
        texts += [p.question, format_completion(p)]
    # The chat prompt repeats these on every question: seen often, they become whole-word tokens. A
    # fixed list, so a template added later (math) does not change the tokenizer and the recipe's numbers.
    for name in CORPUS_TEMPLATES:
        texts += [TEMPLATES[name].system] * 20
    texts += ["system\nuser\nassistant\n"] * 20
    return texts


def tool_texts(tokenizer: Tokenizer, seed: int) -> list[str]:
    """Whole calculator exchanges as the chat template renders them (tools offered in the system
    prompt, the call, the tool's answer, the final turn), for the --tools tokenizer."""
    texts = []
    for p in make_problems(500, seed=seed, kinds=("mul",)):
        messages = build_messages(p.question, "think")
        call = call_text("calculator", {"expression": calculations(p.solution)[0]})
        exchange = [*messages, {"role": "assistant", "content": call}, {"role": "tool", "content": p.answer},
                    {"role": "assistant", "content": format_completion(p)}]
        texts.append(tokenizer.apply_chat_template(exchange, add_generation_prompt=False, tools=tool_specs(["calculator"])))
    return texts


def build_tokenizer(out: Path, seed: int, vocab_size: int, gsm8k_file: Path, tools: bool) -> None:
    corpus = tokenizer_corpus(seed, gsm8k_file)
    if tools:  # rendering the tool texts takes a tokenizer (its chat template): a first one without them
        train_bpe_tokenizer(corpus, out, vocab_size=vocab_size)
        corpus += tool_texts(Tokenizer.from_pretrained(out), seed)
    train_bpe_tokenizer(corpus, out, vocab_size=vocab_size)


def build_init_model(tok_dir: Path, out: Path, seed: int, sizes: dict) -> int:
    tokenizer = Tokenizer.from_pretrained(tok_dir)
    config = Qwen2Config(vocab_size=tokenizer.vocab_size, max_position_embeddings=1024, rope_theta=10000.0,
                         tie_word_embeddings=True, torch_dtype="float32",
                         bos_token_id=tokenizer.token_to_id("<|endoftext|>"), eos_token_id=tokenizer.eos_token_id,
                         **sizes)
    model = Qwen2(config)
    model.init_weights(std=0.02, generator=torch.Generator().manual_seed(seed))
    save_model(model, out)
    tokenizer.save_pretrained(out)
    return config.num_params


def build_data(out: Path, seed: int, kinds: tuple[str, ...], n_train: int, n_test: int) -> None:
    write_jsonl(make_problems(n_train, seed=seed, kinds=kinds), out / "train.jsonl")
    write_jsonl(make_problems(n_test, seed=seed, split="test", kinds=kinds), out / "test.jsonl")


def held_out_eval(model_dir: Path, test_file: Path, cfg, out_file: Path, seed: int) -> dict:
    """Held-out evaluation, saved as JSON: greedy accuracy, mean reward, strict-format rate, and
    "sampled": the same questions sampled group_size times at the rollout temperature (mean@k, the
    expected reward GRPO maximises; seeded, so before and after see the same random numbers)."""
    model = load_adapted_model(model_dir, dtype=torch.float32)  # a LoRA run's checkpoint is an adapter
    tokenizer = Tokenizer.from_pretrained(model_dir)
    task = cfg.task()
    problems = task.load(test_file)
    common = dict(max_new_tokens=cfg.rollout.max_new_tokens, template=task.prompt, rewards=task.rewards)
    common |= dict(tools=cfg.rollout.tools, max_tool_calls=cfg.rollout.max_tool_calls)
    summary, results = evaluate(model, tokenizer, problems, batch_size=256, **common)
    tags = template_tags(cfg.data.template)
    # With tools the completion is the whole exchange; the format is that of the final turn, which the
    # reward scored (its "format" part, when the reward has one).
    strict = ((lambda r: r["format"] > 0) if cfg.reward.weights.get("format")
              else (lambda r: format_reward(r["completion"], r["answer"], tags)))
    summary["format"] = sum(strict(r) for r in results) / len(results)
    summary["sampled"], _ = evaluate(model, tokenizer, problems, batch_size=64, sampling=cfg.rollout.sampling,
                                     samples=cfg.rollout.group_size, seed=seed, **common)
    out_file.write_text(json.dumps({"model": str(model_dir), "summary": summary, "examples": results[:20]},
                                   indent=2, ensure_ascii=False) + "\n")
    return summary


# -- driver -------------------------------------------------------------------------------------


def default_out(quick: bool, tools: bool = False) -> str:
    """The quick and the full recipe, with and without tools, never share a directory
    (configs/tiny.yaml reads runs/tiny)."""
    return ("runs/tiny-quick" if quick else "runs/tiny") + ("-tools" if tools else "")


def reuse_stages(source: Path, out: Path, settings: dict) -> None:
    """Link the stages before GRPO (tokenizer, models, data, SFT evaluation) from another run of the same
    seed and mode into `out`, so that only GRPO and its evaluation run here."""
    stamp = source / "recipe.json"
    theirs = json.loads(stamp.read_text()) if stamp.is_file() else None
    if theirs is None or {k: theirs.get(k) for k in settings} != settings or not (source / "eval_sft.json").is_file():
        raise InputError(f"--reuse {source}: not a recipe directory of the same seed and mode with a finished SFT "
                         f"stage ({settings}); run it first")
    for name in ("tokenizer", "init", "data", "sft", "eval_sft.json"):
        if not (out / name).exists():
            (out / name).symlink_to((source / name).resolve())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None,
                    help="output directory (default runs/tiny, what configs/tiny.yaml reads; runs/tiny-quick with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="shortened recipe (the test): 0.26M model, 80 GRPO steps, 200 held-out questions")
    ap.add_argument("--tools", action="store_true",
                    help="the calculator variant: SFT examples call it, GRPO and evaluation offer it "
                         "(default out: runs/tiny-tools, runs/tiny-quick-tools)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: a model this small gains nothing from more, and the "
                         "documented numbers were made with 1; another count changes float rounding, so the numbers)")
    ap.add_argument("--gsm8k-file", default=None,
                    help=f"GSM8K JSONL for the tokenizer corpus (default: {GSM8K_TRAIN.relative_to(ROOT)} if present, "
                         f"else {GSM8K_FIXTURE.relative_to(ROOT)})")
    ap.add_argument("--fresh", action="store_true", help="delete --out first and redo every stage")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a GRPO setting of configs/tiny.yaml, e.g. --set grpo.loss=cispo (repeatable)")
    ap.add_argument("--reuse", metavar="DIR", default=None,
                    help="take the tokenizer, model, data, SFT and its evaluation from another recipe directory of "
                         "the same seed and mode (scripts/ablate.py runs one SFT per seed for all variants)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run (or finish) the recipe; returns the results dict also written to <out>/results.json."""
    args = parse_args(argv)
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    out = Path(args.out or default_out(args.quick, args.tools))
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    gsm8k_file = Path(args.gsm8k_file) if args.gsm8k_file else (GSM8K_TRAIN if GSM8K_TRAIN.is_file() else GSM8K_FIXTURE)

    # Outputs of another seed, mode or variant must not be silently mixed into this run.
    settings = {"seed": args.seed, "quick": args.quick, "gsm8k_file": str(gsm8k_file)}
    if args.tools:
        settings["tools"] = ["calculator"]
    shared = dict(settings)  # what the stages before GRPO depend on
    if args.overrides:
        settings["set"] = args.overrides
    stamp = out / "recipe.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != settings:
        raise InputError(f"{out} holds a run with other settings ({stamp.read_text().strip()}): "
                         "pass another --out, or --fresh to start over")
    stamp.write_text(json.dumps(settings) + "\n")

    paths = dict(tok=out / "tokenizer", init=out / "init", data=out / "data", sft=out / "sft", grpo=out / "grpo")
    if args.reuse:
        reuse_stages(Path(args.reuse), out, shared)
    train_file, test_file = paths["data"] / "train.jsonl", paths["data"] / "test.jsonl"
    overrides = [f"model.path={paths['sft']}", f"data.train_file={train_file}", f"data.test_file={test_file}",
                 f"train.out_dir={paths['grpo']}", f"train.seed={args.seed}", *sizes["grpo"],
                 *(TOOLS_GRPO if args.tools else []), *args.overrides]
    cfg = load_config(CONFIG, overrides)
    # Seconds per stage; stages reused from an earlier (possibly interrupted) call keep their time.
    previous = out / "results.json"
    timings: dict[str, float] = json.loads(previous.read_text())["seconds"] if previous.is_file() else {}

    def stage(name: str, done: bool, fn, what: str):
        if done:
            log(f"{name}: {what} exists, skipping")
            return None
        log(f"{name}: building {what}")
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: done in {timings[name]:.1f}s")
        return result

    threads = torch.get_num_threads()
    log(f"torch {torch.__version__}, {threads} CPU thread{'s' if threads > 1 else ''}, seed {args.seed}, "
        f"{'quick' if args.quick else 'full'} recipe into {out}")
    stage("tokenizer", (paths["tok"] / "tokenizer.json").is_file(),
          lambda: build_tokenizer(paths["tok"], args.seed, sizes["vocab_size"], gsm8k_file, args.tools), paths["tok"])
    n_params = stage("init", (paths["init"] / "model.safetensors").is_file(),
                     lambda: build_init_model(paths["tok"], paths["init"], args.seed, sizes["model"]), paths["init"])
    if n_params:
        log(f"init: {n_params / 1e6:.2f}M parameters")
    stage("data", train_file.is_file() and test_file.is_file(),
          lambda: build_data(paths["data"], args.seed, sizes["kinds"], sizes["n_train"], sizes["n_test"]), paths["data"])

    def run_sft():
        # sft.py writes <out>.tmp and renames it when done: a half-finished SFT is redone from scratch.
        shutil.rmtree(paths["sft"], ignore_errors=True)
        s = sizes["sft"]
        stop = (["--stop-at-accuracy", str(s["stop_at_accuracy"]), "--check-every", str(s["check_every"]),
                 "--check-size", str(s["check_size"])] if "stop_at_accuracy" in s else [])
        sft.main(["--model", str(paths["init"]), "--data", str(train_file), "--out", str(paths["sft"]),
                  "--steps", str(s["steps"]), "--batch-size", str(s["batch_size"]), "--lr", str(s["lr"]),
                  "--warmup-steps", str(s["warmup_steps"]), "--min-lr-ratio", str(s["min_lr_ratio"]), *stop,
                  "--max-new-tokens", str(cfg.rollout.max_new_tokens), "--template", cfg.data.template,
                  "--seed", str(args.seed), "--device", "cpu", "--dtype", "float32", "--log-every", "50",
                  *(["--tools", *cfg.rollout.tools, "--max-tool-calls", str(cfg.rollout.max_tool_calls)]
                    if cfg.rollout.tools else [])])

    stage("sft", (paths["sft"] / "model.safetensors").is_file(), run_sft, paths["sft"])
    before = stage("eval_sft", (out / "eval_sft.json").is_file(),
                   lambda: held_out_eval(paths["sft"], test_file, cfg, out / "eval_sft.json", args.seed), out / "eval_sft.json")
    before = before or json.loads((out / "eval_sft.json").read_text())["summary"]
    log(f"SFT model: held-out greedy accuracy {before['accuracy']:.3f}")

    def run_grpo():
        argv = ["--config", str(CONFIG), *[a for o in overrides for a in ("--set", o)]]
        if list_checkpoints(paths["grpo"]):
            argv = ["--resume", str(paths["grpo"]), *argv]  # an interrupted run continues where it stopped
        elif paths["grpo"].exists():
            shutil.rmtree(paths["grpo"])  # logs of a run that never saved: start clean
        if train.main(argv) != 0:
            raise InputError("train.py stopped before the last step (interrupted?): re-run to resume")

    def grpo_done() -> bool:
        ckpts = list_checkpoints(paths["grpo"])
        return bool(ckpts) and json.loads((ckpts[-1] / "trainer_state.json").read_text())["step"] >= cfg.train.steps

    stage("grpo", grpo_done(), run_grpo, paths["grpo"])
    last = latest_checkpoint(paths["grpo"])
    final = last / "adapter" if (last / "adapter").is_dir() else last / "model"
    after = stage("eval_grpo", (out / "eval_grpo.json").is_file(),
                  lambda: held_out_eval(final, test_file, cfg, out / "eval_grpo.json", args.seed), out / "eval_grpo.json")
    after = after or json.loads((out / "eval_grpo.json").read_text())["summary"]

    results = {**settings, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "held_out_questions": before["questions"], "grpo_steps": cfg.train.steps,
               "before": before, "after": after, "gain_points": round(100 * (after["accuracy"] - before["accuracy"]), 1),
               "sampled_gain_points": round(100 * (after["sampled"]["accuracy"] - before["sampled"]["accuracy"]), 1),
               "seconds": timings, "total_seconds": round(sum(timings.values()), 1)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_plot:
        plot.main([str(paths["grpo"] / "metrics.jsonl"), "-o", str(out / "curve.png"),
                   "--baseline", str(before["accuracy"]),
                   "--title", f"tiny recipe (seed {args.seed}{', calculator' if args.tools else ''}): "
                              f"GRPO on a {sizes['model']['hidden_size']}-wide Qwen2"])
    print(format_table(results))
    # The commands pick one thread for a model this small by themselves (grpo.machinery.runtime.choose_cpu_threads);
    # another --threads given here is passed on, so they run as the recipe did.
    threads = f" --threads {args.threads}" if args.threads != 1 else ""
    print(f"\nnext: evaluate the trained model on the held-out questions\n"
          f"  python scripts/eval.py --model {final} --data {test_file}{threads}\n"
          f"or run the GRPO stage again into a new directory\n"
          f"  python train.py --config {CONFIG.relative_to(ROOT)} "
          + " ".join(f"--set {o}" for o in overrides if not o.startswith(("train.out_dir", "train.seed")))
          + f" --set train.out_dir={out / 'grpo-again'}{threads}")
    return results


def format_table(r: dict) -> str:
    """The before/after table as markdown."""
    sampled = r["before"]["sampled"]
    k, temperature = sampled["n"] // sampled["questions"], sampled["temperature"]
    rows = [f"held-out evaluation on {r['held_out_questions']} questions never seen in training (seed {r['seed']})",
            "",
            f"| model | greedy accuracy | sampled accuracy (T={temperature:g}, {k}/question) | mean reward (greedy) | strict format | mean length |",
            "|---|---|---|---|---|---|"]
    for name, s in (("SFT warm start", r["before"]), (f"after {r['grpo_steps']} GRPO steps", r["after"])):
        rows.append(f"| {name} | {s['accuracy']:.1%} | {s['sampled']['accuracy']:.1%} | {s['reward']:.3f} "
                    f"| {s['format']:.0%} | {s['length']:.1f} |")
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in r["seconds"].items())
    rows += ["", f"gain: {r['gain_points']:+.1f} greedy accuracy points, {r['sampled_gain_points']:+.1f} sampled; "
                 f"time: {timing} (total {r['total_seconds']:.0f}s, {r['threads']} CPU thread{'s' if r['threads'] > 1 else ''})"]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(run_command(main))
