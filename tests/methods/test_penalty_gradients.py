"""The quadratic penalties (EWC, L2, SI, MAS) without autograd: at a step, the gradient after `after_backward`
equals autograd's gradient of the task loss plus the penalty written by hand, on a class-IL head that grew
after the terms were stored; a step computes no value of the penalty, `penalty_values` is its value; the
logged `loss/<term>` is that value at the row's step; and a non-finite penalty stops the run at the next
boundary."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import pytest
import torch
from torch import Tensor

from cl_bench.core.scenario import Scenario
from cl_bench.methods.base import Method, TrainContext
from cl_bench.methods.ewc import EWC
from cl_bench.methods.l2 import L2
from cl_bench.methods.mas import MAS
from cl_bench.methods.quadratic import Quadratic
from cl_bench.methods.si import SI
from tests.helpers.harness import batch_of, nudge, random_tasks, seeded_mlp, start_task
from tests.helpers.runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")

N_TASKS = 3  # two tasks' terms stored, the head grown from 2 to 4 to 6 rows


def block(p: Tensor, like: Tensor) -> Tensor:
    return p[tuple(slice(0, n) for n in like.shape)]


def squared(params: dict[str, Tensor], fisher: dict[str, Tensor], center: dict[str, Tensor]) -> Tensor:
    """Σ_i F_i·(θ_i − θ*_i)² on the stored blocks, with autograd."""
    return sum((f * (block(params[n], f) - center[n]) ** 2).sum() for n, f in fisher.items())


def run_to_last_task(*methods: Method) -> TrainContext:
    """Tasks 0..N_TASKS-2 end after a random move (SI given a random path integral ω); the last task starts
    and the parameters move again: its context."""
    tasks = random_tasks(N_TASKS, (3,), 2, n=12, seed=0)
    scenario = Scenario("class", [2] * N_TASKS)
    model = seeded_mlp((3,), scenario.n_outputs(0), [4], dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    for t in range(N_TASKS - 1):
        ctx = start_task(model, tasks, scenario, t, *methods, generator=generator, batch_size=4)
        nudge(model, 0.1, seed=t)
        for method in methods:
            if isinstance(method, SI):
                method.omega = {n: torch.rand_like(w, dtype=torch.float64) for n, w in method.omega.items()}
            method.after_task(ctx)
    ctx = start_task(model, tasks, scenario, N_TASKS - 1, *methods, generator=generator, batch_size=4)
    nudge(model, 0.1, seed=99)
    return ctx


def hand_penalty(method: Method, reference: EWC | None, params: dict[str, Tensor]) -> Tensor:
    """Today's definition of each method's penalty, by hand: per-task terms for EWC/L2 separate and sum
    (the terms of `reference`, a separate-mode twin), the running term for online EWC, SI and MAS."""
    if isinstance(method, L2) and method.form == "norm":
        return method.lambda_ * sum(
            torch.linalg.vector_norm(block(params[n], c) - c) for term in method.terms for n, c in term.center.items()
        )
    if isinstance(method, EWC):
        terms = (reference or method).terms
        return method.lambda_ * sum(squared(params, t.fisher, t.center) for t in terms)
    coefficient = method.c if isinstance(method, SI) else method.lambda_
    return coefficient * squared(params, method.term.fisher, method.term.center)


CASES = {
    "ewc separate": lambda: EWC(lambda_=3.0, fisher_samples=100, fisher_label="expected", gamma=0.5),
    "ewc sum": lambda: EWC(lambda_=3.0, fisher_samples=100, fisher_label="expected", gamma=0.5, mode="sum"),
    "ewc online": lambda: EWC(lambda_=3.0, fisher_samples=100, fisher_label="expected", gamma=0.5, mode="online"),
    "ewc last": lambda: EWC(lambda_=3.0, fisher_samples=100, scope="last"),
    "l2 squared": lambda: L2(lambda_=0.7),
    "l2 sum": lambda: L2(lambda_=0.7, mode="sum"),
    "l2 norm": lambda: L2(lambda_=0.7, form="norm"),
    "si": lambda: SI(c=2.5),
    "mas": lambda: MAS(lambda_=1.5, samples=5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_step_gradient_and_value_equal_autograd_of_the_penalty(case):
    method = CASES[case]()
    twin = None
    if isinstance(method, EWC) and method.mode == "sum":
        twin = EWC(fisher_samples=100, fisher_label="expected", gamma=method.gamma) if type(method) is EWC else L2()
    ctx = run_to_last_task(*([method] if twin is None else [method, twin]))
    model = ctx.model
    assert model.head.weight.shape[0] == 6
    params = dict(model.named_parameters())
    batch = batch_of(ctx.tasks[N_TASKS - 1], N_TASKS - 1, [0, 3, 5, 7])

    logits = model(batch.x)
    task_loss = ctx.scenario.loss(logits, batch.y, batch.task_ids)
    expected_value = hand_penalty(method, twin, params)
    expected = torch.autograd.grad(task_loss + expected_value, list(params.values()), retain_graph=True)
    (head_task_grad,) = torch.autograd.grad(task_loss, [model.head.weight], retain_graph=True)

    # the trainer's step: no term of the penalty, backward, after_backward
    assert method.loss_terms(ctx, batch, logits) == {}
    value = method.penalty_values(ctx)[method.loss_name]
    assert not value.requires_grad and torch.allclose(value, expected_value, rtol=1e-10)
    model.zero_grad(set_to_none=True)
    task_loss.backward()
    method.after_backward(ctx)
    for (name, p), want in zip(params.items(), expected):
        assert torch.allclose(p.grad, want, rtol=1e-9, atol=1e-13), name
    # the rows the head gained after the last stored term carry none of the penalty
    assert torch.allclose(model.head.weight.grad[4:], head_task_grad[4:], rtol=1e-12, atol=0)
    assert not torch.allclose(model.head.weight.grad[:4], head_task_grad[:4])


def test_a_penalty_without_a_backward_gradient_still_gets_one():
    """A parameter the task loss does not reach (grad None) gets the penalty's gradient alone."""
    method = CASES["ewc separate"]()
    ctx = run_to_last_task(method)
    params = dict(ctx.model.named_parameters())
    ctx.model.zero_grad(set_to_none=True)
    method.after_backward(ctx)
    expected = torch.autograd.grad(hand_penalty(method, None, params), list(params.values()))
    for p, want in zip(params.values(), expected):
        assert torch.allclose(p.grad, want, rtol=1e-9, atol=1e-13)


def test_si_path_integral_uses_the_gradient_before_the_penalty():
    si = SI(c=2.5)
    ctx = run_to_last_task(si)
    params = dict(ctx.model.named_parameters())
    batch = batch_of(ctx.tasks[N_TASKS - 1], N_TASKS - 1, [0, 1, 2])
    task_loss = ctx.scenario.loss(ctx.model(batch.x), batch.y, batch.task_ids)
    unregularised = torch.autograd.grad(task_loss, list(params.values()), retain_graph=True)
    si.loss_terms(ctx, batch, None)
    ctx.model.zero_grad(set_to_none=True)
    task_loss.backward()
    si.after_backward(ctx)
    for (name, p), g in zip(params.items(), unregularised):
        assert torch.allclose(si.grad[name], g, rtol=1e-12, atol=0), name
        assert not torch.allclose(p.grad, g), name  # the optimiser gets the penalty's gradient too


class RecordingEWC(EWC):
    """EWC recording, after every step, its penalty at the updated parameters computed by hand."""

    values: ClassVar[list[float]] = []

    def after_step(self, ctx: TrainContext) -> None:
        if self.terms:
            with torch.no_grad():
                RecordingEWC.values.append(float(hand_penalty(self, None, dict(ctx.model.named_parameters()))))


def test_logged_term_is_the_penalty_at_the_rows_step_and_the_total_includes_it(tmp_path):
    RecordingEWC.values = []
    summary, run_dir = tiny_run(
        tmp_path, "method=ewc", f"method._target_={__name__}.RecordingEWC", "method.lambda=50", "steps=20"
    )
    assert summary["status"] == "ok", summary.get("error")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if row["task"] == 1 and row["task_step"] > 0]
    values = RecordingEWC.values
    assert len(values) == 20 and [row["task_step"] for row in logged] == [10, 20]
    assert [row["loss/ewc"] for row in logged] == pytest.approx([values[9], values[19]], rel=1e-5)
    assert values[0] < values[-1]  # the penalty changes from step to step: the row's is its step's
    for row in logged:
        assert row["loss/total"] == pytest.approx(row["loss/task"] + row["loss/ewc"], rel=1e-6)


class NaNConstantEWC(EWC):
    """EWC whose stored term's constant is NaN: the penalty's value is NaN, its gradient finite (so only the
    value, computed at the boundary, can reveal it)."""

    def after_task(self, ctx: TrainContext) -> None:
        super().after_task(ctx)
        self.terms = [dataclasses.replace(self.terms[0], constant=float("nan"))]


class InfFisherEWC(EWC):
    """EWC with one infinite Fisher entry: an infinite penalty and gradient."""

    def after_task(self, ctx: TrainContext) -> None:
        super().after_task(ctx)
        self.terms[0].fisher["head.bias"][0] = float("inf")


@pytest.mark.parametrize("poisoned", ["NaNConstantEWC", "InfFisherEWC"])
def test_a_non_finite_penalty_stops_the_run_at_the_next_boundary(tmp_path, poisoned):
    summary, _ = tiny_run(tmp_path, "method=ewc", f"method._target_={__name__}.{poisoned}")
    assert summary["status"] == "failed"
    assert "NonFiniteLoss" in summary["error"] and "between global steps 31 and 40" in summary["error"]


def test_float32_gradient_is_within_a_few_ulps_of_the_exact_one_near_a_merged_center():
    """2λ·(F·θ − F·center) in float32, next to the exact 2λ·F·(θ − center − center_low) in float64: the error is
    a few ulps of 2λ·F·|θ| (the gradient's change when θ moves by one ulp), where θ − center is a hundred-
    thousandth of θ."""
    g = torch.Generator().manual_seed(0)
    theta = (100 + torch.randn(1000, generator=g)).requires_grad_()
    fisher = torch.rand(1000, generator=g)
    center = theta.detach() + 1e-3 * torch.randn(1000, generator=g)
    low = 3e-6 * torch.randn(1000, generator=g)  # below center's ulp (7.6e-6 at 100)
    quadratic = Quadratic({"w": fisher}, {"w": center}, {"w": low})
    theta.grad = torch.zeros_like(theta)
    quadratic.add_gradient({"w": theta}, 2.5)
    exact = 5.0 * fisher.double() * (theta.detach().double() - center.double() - low.double())
    error = (theta.grad.double() - exact).abs()
    ulp = torch.finfo(torch.float32).eps * 5.0 * fisher.double() * theta.detach().double().abs()
    assert (error <= 4 * ulp).all() and error.max() > 0
