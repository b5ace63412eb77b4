"""Device checks, CPU warnings, the LR schedule's shape and the data order."""

from __future__ import annotations

import pytest
import torch

from grpo.machinery.runtime import cpu_warning, resolve_device
from grpo.schedule import DataOrder


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_one_line_error(name):
    with pytest.raises(ValueError, match=rf"^device '{name}' asked for, but torch .* sees no CUDA GPU: use device cpu"):
        resolve_device(name)


def test_auto_and_cpu_and_unknown_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_cpu_warning_only_for_gpu_sized_runs():
    assert cpu_warning(torch.device("cpu"), torch.float32, 1_000_000) is None  # the tiny recipe
    bf16 = cpu_warning(torch.device("cpu"), torch.bfloat16, 1_000_000)
    assert bf16.startswith("WARNING: training on the CPU") and "bfloat16 matmuls" in bf16
    big = cpu_warning(torch.device("cpu"), torch.float32, 3_090_000_000)
    assert "3.09B-parameter model takes minutes to hours per step" in big and "tiny_recipe.py" in big
    assert cpu_warning(torch.device("cuda"), torch.bfloat16, 3_090_000_000) is None


def test_data_order_is_a_permutation_per_epoch_and_resumes_exactly():
    order = DataOrder(7, seed=3)
    first = order.take(7)
    assert sorted(first) == list(range(7))
    second = order.take(7)
    assert sorted(second) == list(range(7)) and second != first  # a fresh shuffle each epoch
    # Resuming from a saved state continues with the same indices.
    a = DataOrder(7, seed=3)
    a.take(10)
    b = DataOrder(7, seed=3, **a.state())
    assert b.take(9) == a.take(9)
    assert DataOrder(7, seed=4).take(7) != first
