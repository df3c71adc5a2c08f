"""The step's hooks (order, and no call for a hook a method does not define) and Synaptic Intelligence:
its path integral, importance and penalty against the paper's formulas, task A, and a run."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.scenario import Scenario
from cl_bench.methods.base import Batch, Method, TrainContext, defined_hook
from cl_bench.methods.baseline import Baseline
from cl_bench.methods.si import SI
from tests.engine.test_trainer_parts import make_trainer
from tests.helpers.config import TINY
from tests.helpers.harness import random_tasks, seeded_mlp, start_task
from tests.helpers.runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


class Recording(Method):
    """Records every hook call; checks that backward ran before after_backward and the step before after_step."""

    def __init__(self):
        self.calls: list[str] = []
        self.before_step: list[torch.Tensor] = []

    def before_task(self, ctx: TrainContext) -> None:
        self.calls.append("before_task")

    def extend_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        self.calls.append("extend_batch")
        return batch

    def loss_terms(self, ctx: TrainContext, batch: Batch, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append("loss_terms")
        return {}

    def after_backward(self, ctx: TrainContext) -> None:
        assert all(p.grad is not None for p in ctx.model.parameters())  # backward ran (zero_grad sets None)
        self.before_step = [p.detach().clone() for p in ctx.model.parameters()]
        self.calls.append("after_backward")

    def after_step(self, ctx: TrainContext) -> None:
        assert any(not torch.equal(p, q) for p, q in zip(ctx.model.parameters(), self.before_step))  # the step ran
        self.calls.append("after_step")

    def penalty_values(self, ctx: TrainContext) -> dict[str, torch.Tensor]:
        self.calls.append("penalty_values")
        return {}

    def after_task(self, ctx: TrainContext) -> None:
        self.calls.append("after_task")


def test_hooks_are_called_in_the_documented_order(make_config):
    trainer = make_trainer(make_config(TINY, "first_task.steps=3", "steps=2", "eval_every=100"), [])
    trainer.method = recording = Recording()
    trainer.run()
    step = ["extend_batch", "loss_terms", "after_backward", "after_step"]
    task = lambda n: ["before_task", *step * n, "penalty_values", "after_task"]  # one row: the task's end
    assert recording.calls == task(3) + task(2)


def test_a_hook_a_method_does_not_define_is_not_called(make_config, monkeypatch):
    assert defined_hook(Baseline(), "after_backward") is None and defined_hook(Baseline(), "after_step") is None
    assert defined_hook(SI(), "after_backward") is not None and defined_hook(SI(), "after_step") is not None

    def never(self, ctx, model):
        raise AssertionError("called a hook the method does not define")

    monkeypatch.setattr(Method, "after_backward", never)
    monkeypatch.setattr(Method, "after_step", never)
    trainer = make_trainer(make_config(TINY, "first_task.steps=3", "steps=2", "eval_every=100"), [])
    trainer.run()
    assert trainer.global_step == 5


class Steps:
    """SGD with momentum on tensor tasks, as the trainer steps, recording each step's task-loss gradient
    (its own backward pass) and parameter change."""

    def __init__(self, si: SI, scenario: str = "domain"):
        self.tasks = random_tasks(2, (3,), 2, n=12, seed=0)
        self.scenario = Scenario(scenario, [2, 2])
        self.model = seeded_mlp((3,), self.scenario.n_outputs(0), [4], dtype=torch.float64)
        self.si = si

    def task(self, task_idx: int, steps: int) -> tuple[TrainContext, list[dict[str, torch.Tensor]]]:
        """Train `steps` steps of task `task_idx`: its context and, per step, −g·Δθ by parameter name."""
        ctx = start_task(self.model, self.tasks, self.scenario, task_idx, self.si)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        split, products = self.tasks[task_idx].train, []
        for step in range(steps):
            rows = torch.arange(4 * step, 4 * step + 4) % len(split)
            x, y = split.x[rows], split.y[rows]
            batch = Batch(x, y, torch.full((4,), task_idx), rows)
            logits = self.model(x)
            task_loss = self.scenario.loss(logits, y, batch.task_ids)
            params = dict(self.model.named_parameters())
            integrated = task_loss  # the loss whose gradient the path integral takes
            if self.si.path_gradient == "total" and self.si.term is not None:
                integrated = task_loss + self.si.c * self.si.term.value(params)  # the penalty, with autograd
            g = dict(zip(params, torch.autograd.grad(integrated, list(params.values()), retain_graph=True)))
            before = {name: p.detach().clone() for name, p in params.items()}
            optimizer.zero_grad(set_to_none=True)
            task_loss.backward()  # the penalty's gradient is after_backward's
            self.si.after_backward(ctx)
            optimizer.step()
            self.si.after_step(ctx)
            products.append({name: -g[name] * (p.detach() - before[name]) for name, p in params.items()})
        return ctx, products


@pytest.mark.parametrize("path_gradient", ["task", "total"])  # Zenke et al.'s g, van de Ven & Tolias's
@pytest.mark.parametrize("task_idx", [0, 1])  # without, then with the penalty of task 0 in the step's gradient
def test_omega_is_the_path_integral_of_the_task_loss_gradient(task_idx, path_gradient):
    steps = Steps(SI(c=5.0, path_gradient=path_gradient))
    if task_idx == 1:
        ctx, _ = steps.task(0, 3)
        steps.si.after_task(ctx)
    _, products = steps.task(task_idx, 4)
    for name, omega in steps.si.omega.items():
        assert torch.allclose(omega, sum(p[name] for p in products), rtol=1e-9, atol=1e-15), name


def test_clipped_as_mammoth_the_step_and_omega_take_the_clipped_total_gradient():
    """Mammoth's SI: the total gradient (penalty included) clipped to [−1, 1], a plain SGD step on it, and
    ω += lr·clip(g)², which for plain SGD is −clip(g)·Δθ."""
    lr, tasks = 0.5, random_tasks(2, (3,), 2, n=12, seed=0)
    scenario = Scenario("domain", [2, 2])
    model = seeded_mlp((3,), 2, [4], dtype=torch.float64)
    si = SI(c=50.0, xi=1.0, path_gradient="total", clip=1.0)
    clipped_any = False
    for task_idx in (0, 1):
        ctx = start_task(model, tasks, scenario, task_idx, si)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
        for step in range(4):
            rows = torch.arange(4 * step, 4 * step + 4) % 12
            x, y = tasks[task_idx].train.x[rows] * 20, tasks[task_idx].train.y[rows]  # large inputs: large gradients
            params = dict(model.named_parameters())
            loss = scenario.loss(model(x), y, torch.full((4,), task_idx))
            total = loss + (si.c * si.term.value(params) if si.term is not None else 0)
            grads = torch.autograd.grad(total, list(params.values()), retain_graph=True)
            g = {name: grad.clamp(-1, 1) for name, grad in zip(params, grads)}
            clipped_any |= any((grad.abs() == 1).any() for grad in g.values())
            before = {name: p.detach().clone() for name, p in params.items()}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            si.after_backward(ctx)
            optimizer.step()
            si.after_step(ctx)
            for name, p in params.items():
                assert torch.allclose(p.detach(), before[name] - lr * g[name], rtol=1e-12, atol=1e-14), name
                expected[name] += lr * g[name].square()
        for name, omega in si.omega.items():
            assert torch.allclose(omega, expected[name], rtol=1e-9, atol=1e-14), name
        si.after_task(ctx)
    assert clipped_any


def test_importance_at_the_task_end_and_the_penalty_follow_the_formulas():
    c, xi = 2.0, 0.05
    steps = Steps(SI(c=c, xi=xi), scenario="class")  # the head grows at task 1: its new rows carry no Ω
    start = {name: p.detach().clone() for name, p in steps.model.named_parameters()}
    ctx, products = steps.task(0, 5)
    omega = {name: sum(p[name] for p in products) for name in start}
    end = {name: p.detach().clone() for name, p in steps.model.named_parameters()}
    steps.si.after_task(ctx)
    importance = {name: omega[name] / ((end[name] - start[name]) ** 2 + xi) for name in start}
    for name in start:
        assert torch.allclose(steps.si.term.fisher[name], importance[name], rtol=1e-9, atol=1e-15)
        assert torch.equal(steps.si.term.center[name], end[name])

    ctx, products = steps.task(1, 3)
    params = dict(steps.model.named_parameters())
    rows = lambda name: tuple(slice(0, n) for n in end[name].shape)
    expected = c * sum((importance[n] * (params[n][rows(n)] - end[n]) ** 2).sum() for n in params)
    assert params["head.weight"].shape[0] == 4 and end["head.weight"].shape[0] == 2
    assert torch.allclose(steps.si.penalty_values(ctx)["si"], expected, rtol=1e-10)

    # the next task's end adds its Ω to the old one's on the old rows, θ* ← θ
    steps.si.after_task(ctx)
    for name in start:
        theta, block = params[name].detach(), rows(name)
        added = sum(p[name] for p in products)[block] / ((theta[block] - end[name]) ** 2 + xi)
        assert torch.allclose(steps.si.term.fisher[name][block], importance[name] + added, rtol=1e-9, atol=1e-15)
        assert torch.equal(steps.si.term.center[name], theta)


def test_si_trains_task_a_itself_and_forgets_less_than_the_baseline(tmp_path):
    baseline, baseline_dir = tiny_run(tmp_path, "method=baseline", name="baseline")  # fills the task-A cache
    si, si_dir = tiny_run(tmp_path, "method=si", "method.c=1000", name="si")
    assert si["status"] == "ok", si.get("error")
    assert si["first_task_cached"] is False  # its path integral must run on task A
    task_a = lambda d: pd.read_json(d / "metrics.jsonl", lines=True).query("task == 0")
    a, si_a = task_a(baseline_dir), task_a(si_dir)
    pd.testing.assert_frame_equal(si_a[a.columns], a)  # no penalty on A: trained as the baseline
    assert si_a["loss/si"].isna().all()
    assert si["forgetting"]["A"] < baseline["forgetting"]["A"] / 2


def test_a_clip_that_is_not_positive_is_refused():
    with pytest.raises(ConfigError, match=r"method.clip=0: must be a finite number > 0"):
        SI(clip=0)
