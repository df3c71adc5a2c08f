"""A-GEM: the projected gradient against Chaudhry et al.'s eq. 11 computed by hand, its memory, refusals, resume
and a run."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
import torch

from cl_bench.core.scenario import Scenario
from cl_bench.methods.agem import AGEM
from tests.helpers.harness import batch_of, random_tasks, seeded_mlp, start_task
from tests.helpers.runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


class Setup:
    """Three tensor tasks of 2 classes, an MLP in float64, A-GEM whose memory holds tasks 0 and 1, at task 2."""

    def __init__(self, scenario: str = "class", memory_size: int = 8, memory_batch_size: int = 5):
        self.tasks = random_tasks(3, (3,), 2, n=20, seed=0, labels="cyclic")
        self.scenario = Scenario(scenario, [2, 2, 2])
        self.model = seeded_mlp((3,), self.scenario.n_outputs(0), [6], dtype=torch.float64)
        self.agem = AGEM(memory_size=memory_size, memory_batch_size=memory_batch_size)
        for task_idx in range(2):
            self.agem.after_task(start_task(self.model, self.tasks, self.scenario, task_idx, self.agem))
        self.ctx = start_task(self.model, self.tasks, self.scenario, 2, self.agem)
        self.params = list(self.model.parameters())

    def step_gradient(self) -> list[torch.Tensor]:
        """The gradient of task 2's loss on a batch, left in p.grad as backward leaves it."""
        batch = batch_of(self.tasks[2], 2, range(8))
        for p in self.params:
            p.grad = None
        self.scenario.loss(self.model(batch.x), batch.y, batch.task_ids).backward()
        return [p.grad.clone() for p in self.params]

    def reference_gradient(self) -> torch.Tensor:
        """g_ref by hand, flat: the mean scenario loss on the exemplars the generator's next draw picks."""
        generator = torch.Generator().set_state(self.ctx.generator.get_state())
        memory = self.agem.memory.memory
        pick = torch.randperm(len(memory["y"]), generator=generator)[:5]
        x, y, t = memory["x"][pick], memory["y"][pick], memory["task_ids"][pick]
        assert set(t.tolist()) <= {0, 1}
        loss = self.scenario.loss(self.model(x), y, t)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, self.params)])

    def after_backward(self) -> torch.Tensor:
        self.agem.after_backward(self.ctx)
        return torch.cat([p.grad.flatten() for p in self.params])


def set_grad(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    start = 0
    for p in params:
        p.grad = flat[start : start + p.numel()].view_as(p).clone()
        start += p.numel()


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_a_conflicting_gradient_is_projected_as_the_formula_says(scenario):
    setup = Setup(scenario)
    g_ref = setup.reference_gradient()
    noise = torch.randn(g_ref.shape, generator=torch.Generator().manual_seed(1), dtype=g_ref.dtype)
    g = -g_ref + 0.1 * noise * g_ref.norm() / noise.norm()  # gᵀg_ref < 0
    assert g @ g_ref < 0
    set_grad(setup.params, g)
    projected = setup.after_backward()
    expected = g - (g @ g_ref) / (g_ref @ g_ref) * g_ref
    assert torch.allclose(projected, expected, rtol=1e-10, atol=1e-12)
    assert abs(projected @ g_ref) < 1e-10 * g.norm() * g_ref.norm()  # on the boundary of the half-space
    assert not torch.allclose(projected, g)


def test_a_gradient_that_agrees_with_the_memory_is_left_as_it_is():
    setup = Setup()
    g_ref = setup.reference_gradient()
    noise = torch.randn(g_ref.shape, generator=torch.Generator().manual_seed(2), dtype=g_ref.dtype)
    g = g_ref + noise * g_ref.norm() / noise.norm()
    assert g @ g_ref >= 0
    set_grad(setup.params, g)
    assert torch.equal(setup.after_backward(), g)


def test_a_training_step_gradient_ends_with_a_non_negative_dot_product_with_g_ref():
    setup = Setup(memory_batch_size=5)
    setup.model.train()
    for step in range(6):  # whichever branch each step takes, the formula holds
        g = torch.cat([grad.flatten() for grad in setup.step_gradient()])
        g_ref = setup.reference_gradient()
        projected = setup.after_backward()
        dot = g @ g_ref
        expected = g - dot / (g_ref @ g_ref) * g_ref if dot < 0 else g
        assert torch.allclose(projected, expected, rtol=1e-10, atol=1e-12)
        assert projected @ g_ref >= -1e-10 * g.norm() * g_ref.norm()
        assert setup.model.training  # the reference pass leaves the mode as it was
        with torch.no_grad():
            for p in setup.params:
                p.sub_(0.5 * p.grad)


def test_nothing_happens_during_the_first_task():
    tasks = random_tasks(2, (3,), 2, n=20, seed=0)
    scenario = Scenario("domain", [2, 2])
    model = seeded_mlp((3,), 2, [6], dtype=torch.float64)
    agem = AGEM()
    ctx = start_task(model, tasks, scenario, 0, agem)
    scenario.loss(model(tasks[0].train.x[:8]), tasks[0].train.y[:8], torch.zeros(8, dtype=torch.long)).backward()
    before = [p.grad.clone() for p in model.parameters()]
    state = ctx.generator.get_state()
    agem.after_backward(ctx)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))
    assert torch.equal(ctx.generator.get_state(), state)


def test_the_memory_is_class_balanced_and_holds_the_tasks_examples():
    setup = Setup(memory_size=9)
    memory = setup.agem.memory.memory
    counts = Counter(zip(memory["task_ids"].tolist(), memory["y"].tolist()))
    assert counts == {(t, c): 2 for t in range(2) for c in range(2)}  # ⌊9 / 4⌋ per class after two tasks
    for x, y, t in zip(memory["x"], memory["y"], memory["task_ids"]):
        split = setup.tasks[int(t)].train
        assert ((split.x == x).all(1) & (split.y == y)).any()
    setup.agem.after_task(setup.ctx)
    memory = setup.agem.memory.memory
    counts = Counter(zip(memory["task_ids"].tolist(), memory["y"].tolist()))
    assert counts == {(t, c): 1 for t in range(3) for c in range(2)} and len(memory["y"]) == 6


def test_the_state_round_trips_and_draws_the_same_reference_batch():
    setup = Setup()
    restored = AGEM(memory_size=8, memory_batch_size=5)
    restored.load_state_dict(setup.agem.state_dict())
    state = setup.ctx.generator.get_state()
    first = setup.agem.reference_batch(setup.ctx)
    setup.ctx.generator.set_state(state)
    again = restored.reference_batch(setup.ctx)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method.memory_size=9"], "method.memory_size=9: smaller than the 10 classes of the tasks"),
        (["method.memory_batch_size=0"], "method.memory_batch_size=0: must be an integer ≥ 1"),
    ],
)
def test_bad_settings_are_refused_before_training(tmp_path, overrides, message):
    summary, _ = tiny_run(tmp_path, "method=agem", "scenario=class", *overrides, name="bad")
    assert summary["status"] == "failed" and message in summary["error"], summary.get("error")
    assert "train_steps" not in summary


def test_a_run_shares_task_a_with_the_baseline_and_forgets_less(tmp_path):
    baseline, baseline_dir = tiny_run(tmp_path, "method=baseline", name="baseline")
    agem, agem_dir = tiny_run(tmp_path, "method=agem", name="agem")
    assert agem["status"] == "ok", agem.get("error")
    assert agem["first_task_cached"] is True  # A-GEM does nothing during task A
    metrics = lambda d: pd.read_json(d / "metrics.jsonl", lines=True)
    a, agem_rows = metrics(baseline_dir), metrics(agem_dir)
    pd.testing.assert_frame_equal(agem_rows.query("task == 0"), a.query("task == 0"))
    assert set(agem_rows.columns) == set(a.columns)  # no loss term of its own
    assert agem["forgetting"]["A"] < baseline["forgetting"]["A"]
