"""GEM: the projection against Lopez-Paz & Ranzato's dual problem solved by hand on small gradients, its
constraints after real steps, its episodic memory, refusals, and a run."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
import torch

from cl_bench.core.scenario import Scenario
from cl_bench.methods.gem import GEM, project
from tests.helpers.harness import batch_of, random_tasks, seeded_mlp, start_task
from tests.helpers.runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(
    ("g", "rows", "expected", "v"),
    [
        # one conflicting task: the projection onto its half-space, g − (⟨g, g1⟩ / ‖g1‖²)·g1, v = −⟨g, g1⟩ / ‖g1‖²
        (vec(1, -1, 0), [vec(0, 1, 0)], vec(1, 0, 0), vec(1)),
        (vec(2, -3, 1), [vec(1, 2, 0)], vec(2.8, -1.4, 1), vec(0.8)),
        # two orthogonal conflicting tasks: each conflicting component removed
        (vec(-1, -1, 1), [vec(1, 0, 0), vec(0, 1, 0)], vec(0, 0, 1), vec(1, 1)),
        # two conflicting tasks, not along the axes: the cone z1 ≥ |z2|; its closest point to (−1, 0, 1) is (0, 0, 1)
        (vec(-1, 0, 1), [vec(1, 1, 0), vec(1, -1, 0)], vec(0, 0, 1), vec(0.5, 0.5)),
        # two conflicting tasks whose gradients are not orthogonal: the cone z1 ≥ 0, z1 + z2 ≥ 0 is closest to
        # (−1, −1) at its apex; g̃ = g + 1·g2 (v1 = 0, though ⟨g̃, g1⟩ = 0 too)
        (vec(-1, -1, 1), [vec(1, 0, 0), vec(1, 1, 0)], vec(0, 0, 1), vec(0, 1)),
        # one of two conflicts: the other constraint is inactive (v = 0) and the result keeps g's agreeing part
        (vec(-1, 2, 0), [vec(1, 0, 0), vec(0, 1, 0)], vec(0, 2, 0), vec(1, 0)),
    ],
)
def test_the_projection_solves_the_papers_dual_as_computed_by_hand(g, rows, expected, v):
    memories = torch.stack(rows)
    projected, dual = project(g, memories, margin=0.0, eps=0.0)
    assert torch.allclose(projected, expected, atol=1e-12) and torch.allclose(dual, v, atol=1e-12)
    assert (memories @ projected >= -1e-12).all()  # every ⟨g̃, g_k⟩ ≥ 0


def test_the_margin_is_the_duals_lower_bound():
    # one task: v = max(margin, −⟨g, g1⟩/‖g1‖²); here −⟨g, g1⟩/‖g1‖² = 0.2 < 0.5, so v = 0.5 and g̃ = g + 0.5·g1
    projected, dual = project(vec(1, -0.2, 0), vec(0, 1, 0)[None], margin=0.5, eps=0.0)
    assert torch.allclose(dual, vec(0.5)) and torch.allclose(projected, vec(1, 0.3, 0))
    projected, dual = project(vec(1, -1, 0), vec(0, 1, 0)[None], margin=0.5, eps=0.0)  # −⟨g, g1⟩ = 1 > 0.5
    assert torch.allclose(dual, vec(1)) and torch.allclose(projected, vec(1, 0, 0))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_random_gradients_meet_the_optimality_conditions(seed, margin):
    generator = torch.Generator().manual_seed(seed)
    memories = torch.randn(4, 30, generator=generator, dtype=torch.float64)
    g = -memories.sum(0) + 0.3 * torch.randn(30, generator=generator, dtype=torch.float64)
    projected, v = project(g, memories, margin=margin, eps=0.0)
    dots = memories @ projected
    assert (dots >= -1e-9).all()  # primal feasibility: every ⟨g̃, g_k⟩ ≥ 0
    assert (v >= margin - 1e-9).all()  # dual feasibility
    assert torch.allclose(projected - g, memories.T @ v, atol=1e-9)  # stationarity: g̃ − g = Gᵀv
    assert torch.allclose((v - margin) * dots, torch.zeros(4, dtype=torch.float64), atol=1e-8)  # slackness
    if margin == 0:  # then g̃ is the closest feasible point: no feasible step towards g shortens the distance
        for t in torch.linspace(0.01, 1, 20, dtype=torch.float64):
            z = projected + t * (g - projected)
            assert ((memories @ z) < -1e-9).any() or (z - g).norm() >= (projected - g).norm() - 1e-9


def test_with_the_ridge_each_constraint_holds_up_to_eps_times_its_dual_variable():
    generator = torch.Generator().manual_seed(0)
    memories = torch.randn(3, 10, generator=generator, dtype=torch.float64)
    g = -memories.sum(0)
    projected, v = project(g, memories, margin=0.5, eps=1e-3)
    assert ((memories @ projected) >= -1e-3 * v - 1e-9).all()
    assert torch.allclose(projected, g + memories.T @ v)


class Setup:
    """Three tensor tasks of 2 classes, an MLP in float64, GEM whose memory holds tasks 0 and 1, at task 2."""

    def __init__(self, scenario: str = "class", memory_size: int = 12, margin: float = 0.5, eps: float = 1e-3):
        self.tasks = random_tasks(3, (3,), 2, n=20, seed=0, labels="cyclic")
        self.scenario = Scenario(scenario, [2, 2, 2])
        self.model = seeded_mlp((3,), self.scenario.n_outputs(0), [6], dtype=torch.float64)
        self.gem = GEM(memory_size=memory_size, margin=margin, eps=eps)
        for task_idx in range(2):
            self.gem.after_task(start_task(self.model, self.tasks, self.scenario, task_idx, self.gem))
        self.ctx = start_task(self.model, self.tasks, self.scenario, 2, self.gem)
        self.params = list(self.model.parameters())

    def task_gradients(self) -> torch.Tensor:
        """G by hand: a row per earlier task, the mean scenario loss's gradient on its memory examples."""
        memory = self.gem.memory
        rows = []
        for task_id in (0, 1):
            mine = memory["task_ids"] == task_id
            loss = self.scenario.loss(self.model(memory["x"][mine]), memory["y"][mine], memory["task_ids"][mine])
            rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, self.params)]))
        return torch.stack(rows)

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward on a batch of task 2, then GEM's edit: the flat gradient before and after it."""
        batch = batch_of(self.tasks[2], 2, range(8))
        for p in self.params:
            p.grad = None
        self.scenario.loss(self.model(batch.x), batch.y, batch.task_ids).backward()
        before = torch.cat([p.grad.flatten() for p in self.params])
        self.gem.after_backward(self.ctx)
        return before, torch.cat([p.grad.flatten() for p in self.params])


def set_grad(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    start = 0
    for p in params:
        p.grad = flat[start : start + p.numel()].view_as(p).clone()
        start += p.numel()


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_a_conflicting_gradient_is_replaced_by_the_projection_on_the_memorys_gradients(scenario):
    setup = Setup(scenario, margin=0.0, eps=0.0)
    memories = setup.task_gradients()
    g = -memories.sum(0)  # conflicts with both tasks
    assert (memories @ g < 0).all()
    set_grad(setup.params, g)
    setup.gem.after_backward(setup.ctx)
    projected = torch.cat([p.grad.flatten() for p in setup.params])
    expected, _ = project(g, memories, margin=0.0, eps=0.0)
    assert torch.allclose(projected, expected, rtol=1e-10, atol=1e-12)
    assert (memories @ projected >= -1e-10 * g.norm() * memories.norm(dim=1)).all()
    assert not torch.allclose(projected, g)


def test_a_gradient_that_agrees_with_every_task_is_left_as_it_is():
    setup = Setup()
    memories = setup.task_gradients()
    g = memories.sum(0) + 0.01 * torch.ones(memories.shape[1], dtype=torch.float64)
    assert (memories @ g >= 0).all()
    set_grad(setup.params, g)
    setup.gem.after_backward(setup.ctx)
    assert torch.equal(torch.cat([p.grad.flatten() for p in setup.params]), g)


def test_real_training_steps_end_with_every_constraint_met():
    setup = Setup(margin=0.5, eps=0.0)
    setup.model.train()
    projected = 0
    for _ in range(8):
        memories = setup.task_gradients()
        before, after = setup.step()
        assert (memories @ after >= -1e-10 * after.norm() * memories.norm(dim=1)).all()
        if (memories @ before < 0).any():
            projected += 1
            assert torch.allclose(after, project(before, memories, margin=0.5, eps=0.0)[0], rtol=1e-10, atol=1e-12)
        else:
            assert torch.equal(after, before)
        with torch.no_grad():
            for p in setup.params:
                p.sub_(0.5 * p.grad)
        assert setup.model.training  # the memory passes leave the mode as it was
    assert projected > 0  # the steps took both branches


def test_nothing_happens_during_the_first_task():
    tasks = random_tasks(2, (3,), 2, n=20, seed=0)
    scenario = Scenario("domain", [2, 2])
    model = seeded_mlp((3,), 2, [6], dtype=torch.float64)
    gem = GEM()
    ctx = start_task(model, tasks, scenario, 0, gem)
    scenario.loss(model(tasks[0].train.x[:8]), tasks[0].train.y[:8], torch.zeros(8, dtype=torch.long)).backward()
    before = [p.grad.clone() for p in model.parameters()]
    gem.after_backward(ctx)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))


def test_the_memory_keeps_memory_size_over_tasks_random_examples_of_each_task():
    setup = Setup(memory_size=14)  # ⌊14 / 3⌋ = 4 of each task
    memory = setup.gem.memory
    assert Counter(memory["task_ids"].tolist()) == {0: 4, 1: 4}
    for task_id in (0, 1):
        mine = memory["task_ids"] == task_id
        split = setup.tasks[task_id].train
        rows = [int(((split.x == x).all(1) & (split.y == y)).nonzero()) for x, y in zip(memory["x"][mine],
                                                                                        memory["y"][mine])]
        assert len(set(rows)) == 4  # distinct examples of that task
    setup.gem.after_task(setup.ctx)
    assert Counter(setup.gem.memory["task_ids"].tolist()) == {0: 4, 1: 4, 2: 4}


def test_the_state_round_trips():
    setup = Setup()
    restored = GEM(memory_size=12)
    restored.load_state_dict(setup.gem.state_dict())
    assert all(torch.equal(restored.memory[key], setup.gem.memory[key]) for key in setup.gem.memory)
    with pytest.raises(ValueError, match="GEM checkpoint state has keys"):
        GEM().load_state_dict({"x": torch.zeros(1)})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method.memory_size=1"], "method.memory_size=1: GEM keeps memory_size // tasks examples of each task, "
                                   "none of the 2 tasks; choose at least 2"),
        (["method.margin=-1"], "method.margin=-1: must be"),
        (["method.eps=-0.1"], "method.eps=-0.1: must be"),
    ],
)
def test_bad_settings_are_refused_before_training(tmp_path, overrides, message):
    summary, _ = tiny_run(tmp_path, "method=gem", "scenario=class", *overrides, name="bad")
    assert summary["status"] == "failed" and message in summary["error"], summary.get("error")
    assert "train_steps" not in summary


def test_a_run_shares_task_a_with_the_baseline_and_forgets_less(tmp_path):
    baseline, baseline_dir = tiny_run(tmp_path, "method=baseline", name="baseline")
    gem, gem_dir = tiny_run(tmp_path, "method=gem", name="gem")
    assert gem["status"] == "ok", gem.get("error")
    assert gem["first_task_cached"] is True  # GEM does nothing during task A
    metrics = lambda d: pd.read_json(d / "metrics.jsonl", lines=True)
    a, gem_rows = metrics(baseline_dir), metrics(gem_dir)
    pd.testing.assert_frame_equal(gem_rows.query("task == 0"), a.query("task == 0"))
    assert set(gem_rows.columns) == set(a.columns)  # no loss term of its own
    assert gem["forgetting"]["A"] < baseline["forgetting"]["A"]
