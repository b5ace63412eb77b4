"""The packages import in one direction: no circles, and machinery never reaches up into the algorithm.

Layers, lowest first (a module may import its own layer and the ones below it):
    qwen2             the model, its sampler, tokenizer and weights
    data              datasets, prompts, rewards
    grpo.optim        AdamW, its offload pipeline and its sharded (DCP) state: one unit
    grpo.machinery    checkpoints, torchrun, interrupts, the non-finite guard, run logs, devices, typed YAML
    grpo              the algorithm: rollout, advantages, batch, logprobs, loss, trainer (and its config)
    grpo.plan         the memory planner and tracer: clients above the trainer
Imports inside functions count too: a circle hidden in a function is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qwen2", "data", "grpo")
LAYERS = ["qwen2", "data", "grpo.optim", "grpo.machinery", "grpo", "grpo.plan"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The modules of our packages that `path` imports, anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]  # `from pkg import module`
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] in PACKAGES}
    return found


def graph() -> dict[str, set[str]]:
    files = [f for p in PACKAGES for f in (ROOT / p).rglob("*.py")]
    modules = {module_name(f): f for f in files}
    edges = {}
    for name, f in modules.items():
        edges[name] = {t for t in imports_of(f) if t in modules and t != name}
    return edges


def layer(module: str) -> int:
    """Index in LAYERS of the most specific layer that holds `module`."""
    best = max((l for l in LAYERS if module == l or module.startswith(l + ".")), key=len)
    return LAYERS.index(best)


def test_no_import_circles():
    edges, state, path = graph(), {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        path.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_lower_layers_never_import_higher_ones():
    upward = sorted(f"{m} -> {n}" for m, targets in graph().items() for n in targets
                    if layer(n) > layer(m))
    assert not upward, "imports that reach up a layer:\n" + "\n".join(upward)
