"""Generative replay (DGR, DGR + distill, RtF): the VAE's loss, the replayed labels and soft targets and the
distillation against van de Ven & Tolias's formulas computed by hand, the replayed batch, the generator as the
method's own model, refusals, and runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from cl_bench.core.errors import ConfigError
from cl_bench.core.scenario import Scenario
from cl_bench.methods.base import OwnModel
from cl_bench.methods.generative_replay import (
    GenerativeReplay,
    distillation,
    replayed_labels,
    soft_targets,
    vae_loss,
)
from cl_bench.models.vae import VAE
from tests.helpers.harness import batch_of, random_tasks, seeded_mlp, start_task, train_context
from tests.helpers.runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_vae_loss_is_their_reconstruction_and_kl_terms_by_hand():
    torch.manual_seed(0)
    vae = VAE((1, 2, 2), 3, [5], latent=2).double()
    x = torch.rand(4, 1, 2, 2, dtype=torch.float64)
    noise = torch.randn(4, 2, dtype=torch.float64)
    flat = x.flatten(1)
    hidden = torch.relu(flat @ vae.features[1].weight.T + vae.features[1].bias)
    mu = hidden @ vae.to_mean.weight.T + vae.to_mean.bias
    logvar = hidden @ vae.to_logvar.weight.T + vae.to_logvar.bias
    z = mu + noise * torch.exp(logvar / 2)
    decoded = torch.relu(z @ vae.decoder[0].weight.T + vae.decoder[0].bias) @ vae.decoder[2].weight.T
    p = torch.sigmoid(decoded + vae.decoder[2].bias)
    bce = -(flat * torch.log(p) + (1 - flat) * torch.log(1 - p)).mean()  # over the batch and the 4 pixels
    kl = -0.5 * (1 + logvar - mu**2 - torch.exp(logvar)).sum(1).mean() / 4
    assert torch.allclose(vae_loss(vae, x, noise), bce + kl)
    assert vae(x).shape == (4, 3) and vae.decode(z).shape == x.shape and (vae.decode(z) == p.view(4, 1, 2, 2)).all()


OLD = torch.tensor([[0.1, 2.0, -1.0, 0.5], [3.0, 0.2, 0.4, 4.0], [0.0, -1.0, 1.5, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize(
    "scenario, task_ids, labels, tasks",
    [
        ("class", [0, 0, 0], [1, 1, 0], [0, 1, 1]),  # argmax over the 4 old units: 1, 3, 2
        ("task", [1, 0, 1], [1, 0, 0], [1, 0, 1]),  # within each input's task's units: 3, 0, 2
    ],
)
def test_replayed_inputs_get_the_previous_models_argmax_as_their_label(scenario, task_ids, labels, tasks):
    y, t = replayed_labels(Scenario(scenario, [2, 2, 2]), OLD, torch.tensor(task_ids))
    assert y.tolist() == labels and t.tolist() == tasks


def test_domain_il_replayed_labels_are_the_argmax_over_the_shared_units():
    y, t = replayed_labels(Scenario("domain", [2, 2, 2]), OLD[:, :2], torch.zeros(3, dtype=torch.long))
    assert y.tolist() == [1, 0, 0] and t.tolist() == [0, 0, 0]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_class_il_distillation_spans_every_unit_with_zero_targets_for_the_new_ones(reduction):
    scenario, T = Scenario("class", [2, 2, 2]), 2.0
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    task_ids = torch.zeros(3, dtype=torch.long)
    targets = soft_targets(scenario, OLD, task_ids, 6, T)
    p = torch.cat([torch.softmax(OLD / T, 1), torch.zeros(3, 2, dtype=torch.float64)], 1)
    assert torch.allclose(targets, p)
    by_hand = -(p * torch.log_softmax(logits / T, 1)).sum(1)
    by_hand = (by_hand / 6 if reduction == "mean" else by_hand).mean() * T**2
    assert torch.allclose(distillation(scenario, logits, targets, task_ids, T, reduction), by_hand)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_task_il_distillation_is_within_each_inputs_task(reduction):
    scenario, T = Scenario("task", [2, 2, 2]), 2.0
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    task_ids = torch.tensor([1, 0, 1])
    targets = soft_targets(scenario, OLD, task_ids, 6, T)
    losses = []
    for i, task in enumerate(task_ids.tolist()):
        units = slice(2 * task, 2 * task + 2)
        p = torch.softmax(OLD[i, units] / T, 0)
        assert torch.allclose(targets[i, units], p) and targets[i].sum().item() == pytest.approx(1)
        loss = -(p * torch.log_softmax(logits[i, units] / T, 0)).sum()
        losses.append(loss / 2 if reduction == "mean" else loss)
    by_hand = torch.stack(losses).mean() * T**2
    assert torch.allclose(distillation(scenario, logits, targets, task_ids, T, reduction), by_hand)


class Setup:
    """Three tasks of 2 classes on 2x2 inputs in [0, 1], an MLP, DGR at task 2 (or task 0)."""

    def __init__(self, scenario: str, task_idx: int = 2, **params):
        self.tasks = random_tasks(3, (1, 2, 2), 2, n=20, seed=0, dtype=torch.float32, labels="cyclic")
        for task in self.tasks:
            task.train.x.copy_(task.train.x.sigmoid())  # inputs in [0, 1], as the VAE's loss wants them
        self.scenario = Scenario(scenario, [2, 2, 2])
        self.model = seeded_mlp((1, 2, 2), self.scenario.n_outputs(0), [6])
        self.method = GenerativeReplay(hidden=[5], latent=3, replay_size=7, **params)
        self.generator = torch.Generator().manual_seed(0)
        for t in range(task_idx + 1):
            self.ctx = start_task(self.model, self.tasks, self.scenario, t, self.method, generator=self.generator)


@pytest.mark.parametrize("scenario, replayed", [("class", 7), ("domain", 7), ("task", 8)])
def test_the_batch_is_followed_by_generated_inputs_labelled_by_the_previous_model(scenario, replayed):
    setup = Setup(scenario)
    batch = batch_of(setup.tasks[2], 2, range(4))
    z = torch.randn(replayed, 3, generator=torch.Generator().set_state(setup.generator.get_state()))
    extended = setup.method.extend_batch(setup.ctx, batch)
    assert len(extended.y) == 4 + replayed and (extended.index[4:] == -1).all()
    x = setup.method.previous_generator.decode(z)
    assert torch.allclose(extended.x[4:], x)
    old = setup.method.teacher(setup.ctx)(x)
    assert old.shape[1] == setup.scenario.n_outputs(1)
    task_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]) if scenario == "task" else torch.zeros(7, dtype=torch.long)
    y, t = replayed_labels(setup.scenario, old, task_ids)
    assert extended.y[4:].tolist() == y.tolist() and extended.task_ids[4:].tolist() == t.tolist()
    assert set(t.tolist()) <= {0, 1}  # only earlier tasks are replayed


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_the_replay_term_is_weighed_one_minus_one_over_t(targets):
    setup = Setup("class", targets=targets)
    extended = setup.method.extend_batch(setup.ctx, batch_of(setup.tasks[2], 2, range(4)))
    logits = setup.model(extended.x)
    terms = setup.method.loss_terms(setup.ctx, extended, logits)
    replayed = slice(4, None)
    if targets == "hard":
        loss = F.cross_entropy(logits[replayed], extended.y[replayed] + 2 * extended.task_ids[replayed])
    else:
        old = setup.method.teacher(setup.ctx)(extended.x[replayed])
        p = torch.cat([torch.softmax(old / 2, 1), torch.zeros(7, 2)], 1)
        loss = -(p * torch.log_softmax(logits[replayed] / 2, 1)).sum(1).mean() * 4
    assert set(terms) == {"replay"} and torch.allclose(terms["replay"], (1 - 1 / 3) * loss)
    assert setup.method.task_loss_weight(setup.ctx) == pytest.approx(1 / 3)


def test_the_generator_takes_a_step_on_the_batch_and_the_replayed_inputs():
    setup = Setup("class")
    generator = setup.method.generator
    before = {name: p.clone() for name, p in generator.module.named_parameters()}
    previous = {name: p.clone() for name, p in setup.method.previous_generator.named_parameters()}
    setup.method.extend_batch(setup.ctx, batch_of(setup.tasks[2], 2, range(4)))
    assert int(generator.optimizer.state_dict()["state"][0]["step"]) == 1  # one step per step of the model
    moved = [name for name, p in generator.module.named_parameters() if not torch.equal(p, before[name])]
    assert "to_mean.weight" in moved and "decoder.0.weight" in moved and "head.weight" not in moved
    assert all(torch.equal(p, previous[name]) for name, p in setup.method.previous_generator.named_parameters())


def test_the_generator_is_built_from_the_method_stream_and_restored_without_a_draw():
    tasks = random_tasks(2, (1, 2, 2), 2, n=10, seed=0)
    model = seeded_mlp((1, 2, 2), 2, [4])
    own = OwnModel(lambda ctx: torch.nn.Linear(4, 3), lambda params: torch.optim.Adam(params, lr=0.1))
    ctx = train_context(model, tasks, Scenario("class", [2, 2]), 0, torch.Generator().manual_seed(5))
    global_state = torch.get_rng_state()
    module = own.ready(ctx)
    assert torch.equal(torch.get_rng_state(), global_state)  # the run's global stream is untouched
    again = OwnModel(lambda ctx: torch.nn.Linear(4, 3), lambda params: torch.optim.Adam(params, lr=0.1))
    assert torch.equal(again.ready(train_context(model, tasks, Scenario("class", [2, 2]), 0,
                                                 torch.Generator().manual_seed(5))).weight, module.weight)
    own.step(module(torch.ones(2, 4)).square().sum())
    restored = OwnModel(lambda ctx: torch.nn.Linear(4, 3), lambda params: torch.optim.Adam(params, lr=0.1))
    restored.load_state_dict(own.state_dict())
    stream = ctx.generator.get_state()
    assert torch.equal(restored.ready(ctx).weight, module.weight)
    assert torch.equal(ctx.generator.get_state(), stream)  # no draw for a module that comes from a checkpoint
    moments = [optimizer.state_dict()["state"][0]["exp_avg"] for optimizer in (restored.optimizer, own.optimizer)]
    assert moments[0].equal(moments[1])  # the optimiser's state too


def test_rtf_on_a_model_without_a_decoder_is_refused():
    with pytest.raises(ConfigError, match="method.feedback=true: .* choose model=vae"):
        Setup("class", task_idx=0, feedback=True)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method=dgr", "method.targets=soft_labels"], "method.targets='soft_labels'"),
        (["method=dgr", "method.T=0"], "method.T=0: must be a finite number > 0"),
        (["method=dgr", "method.replay_size=0"], "method.replay_size=0"),
        (["method=rtf"], "method.feedback=true: Replay-through-Feedback replays through the model's own decoder"),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, overrides, message):
    summary, _ = tiny_run(tmp_path, *overrides, name="bad")
    assert summary["status"] == "failed" and message in summary["error"], summary.get("error")
    assert "train_steps" not in summary


@pytest.mark.parametrize("method", [["method=dgr"], ["method=dgr", "method.targets=soft"], ["method=rtf", "model=vae"]])
def test_a_run_replays_and_does_not_share_the_cached_task_a(tmp_path, method):
    summary, run_dir = tiny_run(tmp_path, *method, "scenario=class", name="run")
    assert summary["status"] == "ok", summary.get("error")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    replayed = [row["loss/replay"] for row in rows if row["task"] == 1 and "loss/replay" in row]
    assert replayed and all(math.isfinite(value) and value > 0 for value in replayed)
    if "model=vae" in method:
        assert all(row["loss/vae"] > 0 for row in rows if "loss/vae" in row)
    assert summary["first_task_cached"] is False  # task A trains the generator (DGR) or the VAE (RtF)
