"""The cosine classifier (models/cosine_head.py): its scores against the formula by hand, growing it, a teacher of a
model that has one, and a run whose method replaces the head."""

from __future__ import annotations

import pytest
import torch

from cl_bench.methods.kd import build_teacher, old_model_state
from cl_bench.models.cosine_head import CosineLinear
from cl_bench.models.head import grow_head, head_like
from cl_bench.records.checkpoint import load_checkpoint
from tests.helpers.harness import seeded_mlp
from tests.helpers.runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_scores_are_the_scaled_cosines_of_the_input_and_each_row():
    head = CosineLinear(3, 2, scale=10.0).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    x = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 4.0]], dtype=torch.float64)
    by_hand = 10 * torch.tensor([[1.0, 1 / 2**0.5], [0.0, 3 / (5 * 2**0.5)]], dtype=torch.float64)
    assert torch.allclose(head(x), by_hand, rtol=1e-12)
    assert torch.allclose(head.cosine(x), by_hand / 10, rtol=1e-12)
    assert "scale" in dict(head.named_buffers()) and not list(head.parameters())[1:]  # a fixed scale is not trained


def test_a_learned_scale_is_a_parameter_and_a_reset_puts_it_back():
    head = CosineLinear(4, 3, scale=1.0, learn_scale=True)
    assert [name for name, _ in head.named_parameters()] == ["weight", "scale"]
    with torch.no_grad():
        head.scale.fill_(7.0)
    head.reset_parameters()
    assert head.scale.item() == 1.0


def test_growing_keeps_the_rows_and_the_scale_and_a_teacher_can_be_cut_back():
    model = seeded_mlp((5,), 2, [4], dtype=torch.float64)
    model.head = CosineLinear(4, 2, scale=1.0, learn_scale=True).double()
    with torch.no_grad():
        model.head.scale.fill_(3.0)
    old = model.head.weight.detach().clone()
    assert grow_head(model, 5)
    assert isinstance(model.head, CosineLinear) and model.head.out_features == 5
    assert torch.equal(model.head.weight[:2], old) and model.head.scale.item() == 3.0
    assert model.head.learn_scale and model.head.weight.dtype == torch.float64
    torch.manual_seed(0)
    before = torch.get_rng_state()
    blank = head_like(model.head, 2, initialise=False)
    assert torch.equal(torch.get_rng_state(), before)  # a head to load weights into draws nothing
    assert isinstance(blank, CosineLinear) and blank.out_features == 2
    teacher = build_teacher(model, old_model_state(model, 2), torch.device("cpu"))
    x = torch.randn(3, 5, dtype=torch.float64)
    assert torch.allclose(teacher(x), model(x)[:, :2], rtol=1e-12)


def test_a_run_whose_method_brings_a_cosine_head_trains_and_resumes_with_it(tmp_path):
    summary, run_dir = tiny_run(tmp_path, "method=er_ace", "scenario=class")
    assert summary["status"] == "ok", summary.get("error")
    state = load_checkpoint(sorted((run_dir / "checkpoints").glob("*.pt"))[-1])
    assert "head.scale" in state["model"] and "head.bias" not in state["model"]
