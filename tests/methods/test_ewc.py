"""EWC and L2: the penalty's closed form, online sums, head growth, λ = 0, checkpoints, validation."""

from __future__ import annotations

import io

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cl_bench.core.layout import CONFIG_DIR
from cl_bench.core.scenario import Scenario
from cl_bench.methods.base import TrainContext
from cl_bench.methods.build import build_method
from cl_bench.methods.ewc import EWC
from cl_bench.methods.fisher import diagonal_fisher_loop
from cl_bench.methods.l2 import L2
from tests.helpers.harness import nudge, random_tasks, seeded_mlp, start_task, train_context

pytestmark = pytest.mark.usefixtures("one_thread")


class Sequence:
    """A model trained on nothing: each 'task' ends with a random step away from the last θ*."""

    def __init__(self, scenario: str, n_tasks: int = 3, n_classes: int = 2, dtype=torch.float64):
        self.tasks = random_tasks(n_tasks, (3,), n_classes, n=12, seed=0, dtype=dtype)
        self.scenario = Scenario(scenario, [n_classes] * n_tasks)
        self.model = seeded_mlp((3,), self.scenario.n_outputs(0), [4], dtype=dtype)
        self.generator = torch.Generator().manual_seed(1)

    def ctx(self, task_idx: int) -> TrainContext:
        return train_context(self.model, self.tasks, self.scenario, task_idx, self.generator, batch_size=4)

    def start(self, task_idx: int) -> TrainContext:
        return start_task(self.model, self.tasks, self.scenario, task_idx, generator=self.generator, batch_size=4)

    def nudge(self, scale: float = 0.1) -> None:
        nudge(self.model, scale)

    def run(self, methods: list[EWC], n_tasks: int) -> TrainContext:
        """Tasks 0..n_tasks-1 end (each method's after_task), then task n_tasks starts."""
        for t in range(n_tasks):
            ctx = self.start(t)
            self.nudge()
            for method in methods:
                method.after_task(ctx)
        ctx = self.start(n_tasks)
        self.nudge()
        return ctx


def term(method: EWC, ctx: TrainContext) -> torch.Tensor:
    """The penalty's value as the trainer logs it (`penalty_values`)."""
    return method.penalty_values(ctx)[method.loss_name]


def grads(value: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value, list(model.parameters()), allow_unused=True, materialize_grads=True))


def step_grads(method: EWC, ctx: TrainContext) -> list[torch.Tensor]:
    """The gradient the penalty adds at a step: `after_backward` on gradients set to None."""
    ctx.model.zero_grad(set_to_none=True)
    method.after_backward(ctx)
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in ctx.model.parameters()]


def definition(method: EWC, ctx: TrainContext) -> torch.Tensor:
    """λ·Σ_j F_j(θ − θ*_j)² over the stored terms, through autograd (`Quadratic.value`)."""
    params = dict(ctx.model.named_parameters())
    return method.lambda_ * sum(t.value(params) for t in method.terms)


def test_penalty_is_lambda_times_fisher_weighted_squared_distance():
    seq = Sequence("domain", n_tasks=2)
    ewc = EWC(lambda_=3.0, fisher_samples=1000)
    ctx = seq.start(0)
    anchor = {name: p.detach().clone() for name, p in seq.model.named_parameters()}
    ewc.after_task(ctx)
    fisher = diagonal_fisher_loop(seq.model, seq.tasks[0].train, torch.arange(12), 0, seq.scenario, "empirical", 5)
    seq.nudge()
    params = dict(seq.model.named_parameters())
    expected = 3.0 * sum((fisher[n] * (params[n] - anchor[n]) ** 2).sum() for n in params)
    assert torch.allclose(term(ewc, seq.ctx(1)), expected, rtol=1e-10)
    assert ewc.fisher_counts == [12]


def test_no_term_before_the_first_task_has_ended():
    seq = Sequence("domain")
    assert EWC().penalty_values(seq.ctx(0)) == {}


@pytest.mark.parametrize("gamma", [1.0, 0.5])
@pytest.mark.parametrize("scenario", ["class", "domain"])
def test_running_sums_equal_the_sum_of_separate_penalties_in_value_and_gradient(scenario, gamma):
    seq = Sequence(scenario, n_tasks=4)
    separate = EWC(fisher_samples=100, fisher_label="expected", gamma=gamma)
    summed = EWC(fisher_samples=100, fisher_label="expected", gamma=gamma, mode="sum")
    ctx = seq.run([separate, summed], 3)
    assert len(separate.terms) == 3 and len(summed.terms) == 1
    a, b = term(separate, ctx), term(summed, ctx)
    assert torch.allclose(a, b, rtol=1e-10) and torch.allclose(a, definition(separate, ctx), rtol=1e-10)
    expected = grads(definition(separate, ctx), seq.model)
    for method in (separate, summed):
        for got, want in zip(step_grads(method, ctx), expected):
            assert torch.allclose(got, want, rtol=1e-9, atol=1e-14)


def test_decay_weighs_each_task_by_gamma_to_its_age():
    seq = Sequence("domain", n_tasks=4)
    decayed, terms = EWC(fisher_samples=8, gamma=0.5), []
    for t in range(3):
        ctx = seq.start(t)
        seq.nudge()
        decayed.after_task(ctx)
        single = EWC(fisher_samples=8)
        single.terms = [decayed.terms[-1]]
        terms.append(single)
    ctx = seq.start(3)
    expected = sum(0.5 ** (2 - t) * term(single, ctx) for t, single in enumerate(terms))
    assert torch.allclose(term(decayed, ctx), expected, rtol=1e-10)


def test_online_is_schwarz_et_al_running_fisher_at_the_latest_anchor():
    """F̃ ← γ·F̃ + F_k at the end of task k, one anchor θ*_k: after three tasks the penalty is
    λ·Σ (γ²F_1 + γF_2 + F_3)(θ − θ*_3)², F_k the per-sample-loop Fisher over all of task k."""
    seq = Sequence("class", n_tasks=4)
    online = EWC(lambda_=2.0, fisher_samples=None, gamma=0.5, mode="online")
    fishers = []
    for t in range(3):
        ctx = seq.start(t)
        seq.nudge()
        fishers.append(diagonal_fisher_loop(seq.model, seq.tasks[t].train, torch.arange(12), t, seq.scenario, "empirical", 5))
        anchor = {name: p.detach().clone() for name, p in seq.model.named_parameters()}
        online.after_task(ctx)
    ctx = seq.start(3)
    seq.nudge()
    params = dict(seq.model.named_parameters())
    expected = 0
    for name, f3 in fishers[2].items():
        running = f3.clone()
        for age, f in ((1, fishers[1][name]), (2, fishers[0][name])):
            running[tuple(slice(0, n) for n in f.shape)] += 0.5**age * f
        rows = tuple(slice(0, n) for n in f3.shape)
        expected = expected + (running * (params[name][rows] - anchor[name]) ** 2).sum()
    assert len(online.terms) == 1 and online.fisher_counts == [12, 12, 12]
    assert torch.allclose(term(online, ctx), 2.0 * expected, rtol=1e-9)


def test_running_sums_stay_accurate_in_float32_near_the_anchors():
    """ΣF·θ² − 2θ·ΣFθ* + ΣFθ*² would cancel catastrophically here; the centred form does not."""
    seq = Sequence("domain", n_tasks=4, dtype=torch.float32)
    with torch.no_grad():
        for p in seq.model.parameters():
            p.add_(100.0)
    separate, online = EWC(lambda_=1.0, fisher_samples=100), EWC(lambda_=1.0, fisher_samples=100, mode="sum")
    for t in range(3):
        ctx = seq.start(t)
        seq.nudge(1e-3)
        separate.after_task(ctx)
        online.after_task(ctx)
    ctx = seq.start(3)
    params = {n: p.detach().double() for n, p in seq.model.named_parameters()}
    exact = sum(
        (q.fisher[n].double() * (params[n] - q.center[n].double()) ** 2).sum() for q in separate.terms for n in q.fisher
    )
    assert float(exact) > 0
    assert abs(term(online, ctx).item() - float(exact)) < 1e-5 * float(exact)


def test_scope_last_keeps_only_the_most_recent_task():
    seq = Sequence("domain", n_tasks=4)
    last, single = EWC(fisher_samples=8, scope="last"), EWC(fisher_samples=8)
    for t in range(3):
        ctx = seq.start(t)
        seq.nudge()
        last.after_task(ctx)
    single.terms = [last.terms[0]]
    ctx = seq.start(3)
    assert len(last.terms) == 1 and torch.equal(term(last, ctx), term(single, ctx))


@pytest.mark.parametrize("mode", ["separate", "sum", "online"])
@pytest.mark.parametrize("scenario", ["class", "task"])
def test_head_rows_added_after_a_task_carry_no_penalty(scenario, mode):
    seq = Sequence(scenario, n_tasks=3)
    ewc = EWC(fisher_samples=8, fisher_label="expected", mode=mode)
    ctx = seq.run([ewc], 1)
    before = term(ewc, ctx)
    with torch.no_grad():
        seq.model.head.weight[2:].add_(5.0)
        seq.model.head.bias[2:].add_(5.0)
    after = term(ewc, ctx)
    assert torch.equal(before, after)
    step_grads(ewc, ctx)
    weight_grad, bias_grad = seq.model.head.weight.grad, seq.model.head.bias.grad
    assert weight_grad[2:].abs().max() == 0 and bias_grad[2:].abs().max() == 0
    assert weight_grad[:2].abs().max() > 0
    assert ewc.terms[0].fisher["head.weight"].shape[0] == 2


def test_lambda_zero_gives_a_zero_term():
    seq = Sequence("domain")
    ewc = EWC(lambda_=0, fisher_samples=8)
    value = term(ewc, seq.run([ewc], 1))
    assert value.item() == 0 and all(g.abs().max() == 0 for g in step_grads(ewc, seq.ctx(1)))


@pytest.mark.parametrize("mode", ["separate", "sum", "online"])
def test_state_dict_round_trip_through_a_weights_only_checkpoint(mode):
    seq = Sequence("class", n_tasks=3)
    ewc = EWC(fisher_samples=8, mode=mode)
    ctx = seq.run([ewc], 2)
    buffer = io.BytesIO()
    torch.save(ewc.state_dict(), buffer)
    buffer.seek(0)
    restored = EWC(fisher_samples=8, mode=mode)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(term(restored, ctx), term(ewc, ctx))
    assert restored.fisher_counts == [8, 8]
    with pytest.raises(ValueError, match="method.mode"):
        EWC(mode="separate" if mode == "online" else "online").load_state_dict(ewc.state_dict())


def test_l2_is_the_penalty_with_unit_importance():
    seq = Sequence("class", n_tasks=2)
    l2 = L2(lambda_=0.5)
    ctx = seq.start(0)
    anchor = {n: p.detach().clone() for n, p in seq.model.named_parameters()}
    l2.after_task(ctx)
    ctx = seq.start(1)
    seq.nudge()
    params = dict(seq.model.named_parameters())
    expected = 0.5 * sum(((params[n][: anchor[n].shape[0]] - anchor[n]) ** 2).sum() for n in anchor)
    terms = l2.penalty_values(ctx)
    assert list(terms) == ["l2"] and torch.allclose(terms["l2"], expected, rtol=1e-12)
    assert l2.fisher_counts == []


def test_l2_norm_form_is_the_tutorials_unsquared_norm_per_tensor():
    seq = Sequence("class", n_tasks=2)
    l2 = L2(lambda_=0.5, form="norm")
    ctx = seq.start(0)
    anchor = {n: p.detach().clone() for n, p in seq.model.named_parameters()}
    l2.after_task(ctx)
    ctx = seq.start(1)
    at_anchor = term(l2, ctx)
    assert at_anchor.item() == 0 and all(g.abs().max() == 0 for g in step_grads(l2, ctx))
    seq.nudge()
    params = dict(seq.model.named_parameters())
    expected = 0.5 * sum(((params[n][: anchor[n].shape[0]] - anchor[n]) ** 2).sum().sqrt() for n in anchor)
    assert torch.allclose(term(l2, ctx), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="method.form=norm"):
        L2(form="norm", mode="sum")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lambda_": -1}, "method.lambda=-1: must be a finite number ≥ 0"),
        ({"lambda_": float("nan")}, "method.lambda=nan: must be a finite number ≥ 0"),
        ({"gamma": 1.5}, "method.gamma=1.5"),
        ({"fisher_samples": 0}, "method.fisher_samples=0"),
        ({"fisher_label": "true"}, "method.fisher_label='true': now called empirical"),
        ({"scope": "first"}, "method.scope='first'"),
        ({"mode": "online", "scope": "last"}, "method.mode=online"),
        ({"mode": "sum", "scope": "last"}, "method.mode=sum"),
    ],
)
def test_invalid_arguments_name_their_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EWC(**kwargs)


@pytest.mark.parametrize("name, cls", [("ewc", EWC), ("l2", L2)])
def test_presets_build_with_their_defaults(name, cls):
    node = OmegaConf.load(CONFIG_DIR / "method" / f"{name}.yaml")
    method = build_method(node, "domain")
    assert type(method) is cls and method.lambda_ == float(node["lambda"])
    assert name != "ewc" or method.fisher_label == "empirical"
