"""Memory Aware Synapses: its importance against a per-example autograd loop, the penalty against the
formula, its state, and a run."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.scenario import Scenario
from cl_bench.methods.mas import MAS
from tests.helpers.harness import nudge, random_tasks, seeded_mlp, start_task
from tests.helpers.runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def hand_omega(model, x):
    """(1/N)·Σ_n |∂‖f(x_n)‖²₂/∂θ| by torch.autograd, one example at a time, in eval mode."""
    model.eval()
    params = dict(model.named_parameters())
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for i in range(len(x)):
        out = model(x[i : i + 1])
        norm = (out * out).sum()
        for name, g in zip(params, torch.autograd.grad(norm, list(params.values()))):
            total[name] += g.abs()
    model.train()
    return {name: t / len(x) for name, t in total.items()}


def setup(scenario="class", samples=7):
    tasks = random_tasks(2, (3,), 2, n=12, seed=0)
    scen = Scenario(scenario, [2, 2])
    model = seeded_mlp((3,), scen.n_outputs(0), [4], dtype=torch.float64, dropout=0.2)
    return tasks, scen, model, MAS(lambda_=3.0, samples=samples)


def test_omega_is_the_mean_absolute_gradient_of_the_squared_output_norm():
    tasks, scen, model, mas = setup()
    generator = torch.Generator().manual_seed(5)
    ctx = start_task(model, tasks, scen, 0, mas, generator=generator)
    index = torch.randperm(12, generator=torch.Generator().manual_seed(5))[:7]  # the draw MAS makes
    mas.after_task(ctx)
    assert mas.sample_counts == [7]
    expected = hand_omega(model, tasks[0].train.x[index])
    for name, p in model.named_parameters():
        assert torch.allclose(mas.term.fisher[name], expected[name], rtol=1e-10, atol=1e-15), name
        assert torch.equal(mas.term.center[name], p.detach())
    assert model.training  # the mode is restored


def test_null_samples_averages_over_every_example():
    tasks, scen, model, mas = setup(samples=None)
    ctx = start_task(model, tasks, scen, 0, mas)
    mas.after_task(ctx)
    expected = hand_omega(model, tasks[0].train.x)
    assert mas.sample_counts == [12]
    for name in expected:
        assert torch.allclose(mas.term.fisher[name], expected[name], rtol=1e-10, atol=1e-15)


def test_the_penalty_is_lambda_omega_squared_distance_and_omega_accumulates():
    tasks, scen, model, mas = setup(samples=None)
    ctx = start_task(model, tasks, scen, 0, mas)
    assert mas.penalty_values(ctx) == {}  # nothing during task A
    mas.after_task(ctx)
    omega0 = {n: f.clone() for n, f in mas.term.fisher.items()}
    star = {n: p.detach().clone() for n, p in model.named_parameters()}
    ctx = start_task(model, tasks, scen, 1, mas)  # class-IL: the head grows, its new rows carry no Ω
    nudge(model, 0.1, seed=1)
    params = dict(model.named_parameters())
    rows = lambda n: tuple(slice(0, k) for k in star[n].shape)
    expected = 3.0 * sum((omega0[n] * (params[n][rows(n)] - star[n]) ** 2).sum() for n in params)
    assert params["head.weight"].shape[0] == 4
    assert torch.allclose(mas.penalty_values(ctx)["mas"], expected, rtol=1e-12)

    mas.after_task(ctx)  # Ω ← Ω + Ω_B, θ* ← θ
    omega1 = hand_omega(model, tasks[1].train.x)
    for name, p in model.named_parameters():
        want = omega1[name].clone()
        want[rows(name)] += omega0[name]
        assert torch.allclose(mas.term.fisher[name], want, rtol=1e-10, atol=1e-15), name
        assert torch.equal(mas.term.center[name], p.detach())

    restored = MAS(lambda_=3.0, samples=None)
    restored.load_state_dict(mas.state_dict())
    assert torch.equal(restored.penalty_values(ctx)["mas"], mas.penalty_values(ctx)["mas"])
    assert restored.sample_counts == [12, 12]


@pytest.mark.parametrize("kwargs", [{"lambda_": -1.0}, {"samples": 0}, {"samples": 1.5}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ConfigError):
        MAS(**kwargs)


def test_more_samples_than_a_task_has_is_refused_before_training():
    tasks, _, _, _ = setup()
    with pytest.raises(ConfigError, match="method.samples=13"):
        MAS(samples=13).check(tasks)


def test_mas_shares_task_a_and_forgets_less_than_the_baseline(tmp_path):
    # on the embedded digits at +debug=tiny, λ=1 (the paper's) leaves task A's forgetting at the
    # baseline's 0.11; λ=100 brings it to 0
    baseline, _ = tiny_run(tmp_path, "method=baseline", name="baseline")  # fills the task-A cache
    mas, mas_dir = tiny_run(tmp_path, "method=mas", "method.lambda=100", name="mas")
    assert mas["status"] == "ok", mas.get("error")
    assert mas["first_task_cached"] is True
    metrics = pd.read_json(mas_dir / "metrics.jsonl", lines=True)
    assert metrics.query("task == 1")["loss/mas"].notna().any()
    assert mas["forgetting"]["A"] < baseline["forgetting"]["A"] / 2
