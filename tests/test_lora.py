"""LoRA: the base model at B = 0, PEFT's format both ways, training moves only the adapters, merged
equals unmerged, exact resume, and one-line errors for what cannot work."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import train
from conftest import ROOT, UNTIED, hf_model, save_hf
from grpo.machinery.checkpoint import latest_checkpoint
from grpo.config import ConfigError, load_config
from qwen2 import load_model
from qwen2.lora import TARGETS, adapters_disabled, add_lora, load_adapted_model, merge_lora, save_adapter
from tiny_run import metrics, without_times, write_config

IDS = torch.randint(0, 250, (3, 11), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    hf = hf_model(seed=5, **UNTIED)
    return hf, save_hf(hf, tmp_path_factory.mktemp("lora") / "base")


def adapted(path, rank=4, targets=TARGETS, seed=0):
    """Our model with adapters whose B is random too, so that they change the output."""
    model = load_model(path)
    add_lora(model, rank, 2.0 * rank, targets, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=g)
    return model


def test_with_b_zero_the_adapted_model_is_the_base_model(base):
    _, path = base
    model = load_model(path)
    with torch.no_grad():
        before = model(IDS)
    add_lora(model, 8, 16.0, ["q_proj", "down_proj"])
    with torch.no_grad():
        assert torch.equal(model(IDS), before)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[-3] for n in trainable} == {"q_proj", "down_proj"}
    # Hugging Face's parameter names are untouched.
    assert "model.layers.0.self_attn.q_proj.weight" in dict(model.named_parameters())


def test_peft_loads_our_adapter_and_computes_our_logits(base, tmp_path):
    from peft import PeftModel

    hf, path = base
    ours = adapted(path)
    with torch.no_grad():
        want = ours(IDS)
        with adapters_disabled(ours):
            assert not torch.allclose(ours(IDS), want)  # the adapters matter; off, they are gone
    save_adapter(ours, tmp_path / "adapter", base_model=str(path))
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = peft_model(IDS).logits
    assert (got - want).abs().max().item() <= 1e-4
    # ... and we load it back the same way (base from adapter_config.json).
    with torch.no_grad():
        assert torch.equal(load_adapted_model(tmp_path / "adapter")(IDS), want)


def test_merged_weights_give_the_unmerged_logits(base):
    _, path = base
    model = adapted(path)
    with torch.no_grad():
        unmerged = model(IDS)
        merge_lora(model)
        merged = model(IDS)
    assert (merged - unmerged).abs().max().item() <= 1e-5
    assert not any("lora" in n for n, _ in model.named_parameters())


def lora_config(tmp_path, tiny_model, out, **train_section):
    return write_config(tmp_path, tiny_model, out=out, model={"lora": {"rank": 4, "alpha": 8.0}},
                        optim={"lr": 1e-2, "warmup_steps": 1},
                        train={"save_every": 100, "eval_every": 0, **train_section})


def test_training_moves_only_the_adapters_and_resumes_exactly(tmp_path, tiny_model):
    """mu = 2 and beta > 0 (write_config's defaults): pi_old from the first pass, the reference with
    the adapters off; 2 steps + resume + 1 step == 3 steps."""
    full, split = lora_config(tmp_path, tiny_model, "full"), lora_config(tmp_path, tiny_model, "split")
    assert train.main(["--config", str(full)]) == 0
    assert train.main(["--config", str(split), "--stop-after", "2"]) == 0
    assert train.main(["--resume", str(tmp_path / "split")]) == 0
    a, b = without_times(metrics(tmp_path / "full")), without_times(metrics(tmp_path / "split"))
    assert [r["step"] for r in b] == [1, 2, 3] and a == b
    assert any(r["kl"] > 0 for r in a) and any(r["grad_norm"] > 0 for r in a)

    ckpt = latest_checkpoint(tmp_path / "full")
    assert (ckpt / "adapter" / "adapter_config.json").is_file() and not (ckpt / "model").exists()
    trained, original = load_adapted_model(ckpt / "adapter"), load_model(tiny_model)
    own = dict(original.named_parameters())
    for name, p in trained.named_parameters():
        if "lora" in name:
            continue
        assert torch.equal(p, own[name]), f"{name} changed: only adapters may train"
    assert any(p.abs().max() > 0 for n, p in trained.named_parameters() if "lora_B" in n)  # B left zero


def test_merge_script_writes_a_model_transformers_loads(tmp_path, tiny_model):
    cfg = lora_config(tmp_path, tiny_model, "run", steps=2)
    assert train.main(["--config", str(cfg)]) == 0
    adapter = latest_checkpoint(tmp_path / "run") / "adapter"
    script = [sys.executable, "scripts/merge_lora.py"]
    res = subprocess.run([*script, str(adapter), str(tmp_path / "merged")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        want = load_adapted_model(adapter)(IDS % 300)
        assert (hf(IDS % 300).logits - want).abs().max().item() <= 1e-4
    # Bad input: not an adapter; a base of another shape.
    res = subprocess.run([*script, str(tiny_model), str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "is not a LoRA adapter directory" in res.stderr
    other = save_hf(hf_model(seed=1, **UNTIED), tmp_path / "other")
    res = subprocess.run([*script, str(adapter), str(tmp_path / "y"), "--base", str(other)], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "does not fit this base model" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("override,message", [
    ("model.lora.targets=[q_proj, qkv_proj]", "model.lora.targets must be a non-empty selection of q_proj, k_proj.*unknown: qkv_proj"),
    ("model.lora.dropout=0.1", "model.lora.dropout > 0 cannot serve grpo.updates_per_batch > 1"),
])
def test_lora_settings_that_cannot_work_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "config.yaml", ["model.lora.rank=8", "grpo.updates_per_batch=2", override])


def test_resuming_with_other_lora_settings_is_refused(tmp_path, tiny_model, capsys):
    assert train.main(["--config", str(lora_config(tmp_path, tiny_model, "run", steps=1))]) == 0
    capsys.readouterr()
    assert train.main(["--resume", str(tmp_path / "run"), "--set", "model.lora.rank=0"]) == 2
    assert "was trained with LoRA: resume it with its own model.lora settings" in capsys.readouterr().err
