"""iCaRL (Rebuffi et al. 2017): its loss against the BCE formula by hand, the nearest-mean-of-exemplars prediction
against a hand computation, the herding memory, the refusal outside class-IL, resume, and a run."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.scenario import Scenario
from cl_bench.methods.build import build_method
from cl_bench.methods.icarl import ICaRL
from cl_bench.methods.replay import herding
from tests.helpers.config import TINY
from tests.helpers.harness import batch_of, nudge, random_tasks, seeded_mlp, start_task
from tests.helpers.runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


class TwoTasks:
    """Class-IL over two tasks of 3 classes of random inputs, a float64 MLP, and iCaRL with memory K."""

    def __init__(self, memory_size: int, temperature: float = 1.0):
        self.tasks = random_tasks(2, (4,), 3, n=18, seed=0, labels="cyclic")
        self.scenario = Scenario("class", [3, 3])
        self.model = seeded_mlp((4,), self.scenario.n_outputs(0), [5], dtype=torch.float64)
        self.icarl = ICaRL(memory_size=memory_size, replay_batch_size=4, temperature=temperature)

    def start(self, task_idx: int):
        return start_task(self.model, self.tasks, self.scenario, task_idx, self.icarl, batch_size=6)


def bce_by_hand(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−mean over examples and units of t·log σ(z) + (1 − t)·log(1 − σ(z))."""
    p = torch.sigmoid(logits)
    return -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()


@pytest.mark.parametrize("temperature", [1.0, 2.0])  # Rebuffi et al.'s; van de Ven & Tolias's code's
def test_the_loss_is_the_bce_with_one_hot_new_classes_and_the_previous_models_sigmoids_on_old_ones(temperature):
    run = TwoTasks(memory_size=6, temperature=temperature)
    ctx = run.start(0)
    assert run.icarl.task_loss_weight(ctx) == 0.0  # the BCE replaces the trainer's cross-entropy
    batch = batch_of(run.tasks[0], 0, [0, 1, 2, 3])
    logits = run.model(batch.x)
    assert run.icarl.extend_batch(ctx, batch) is batch  # no memory yet
    one_hot = torch.eye(3, dtype=torch.float64)[batch.y]
    assert torch.allclose(run.icarl.loss_terms(ctx, batch, logits)["icarl"], bce_by_hand(logits, one_hot), rtol=1e-12)

    nudge(run.model, 0.3, seed=1)
    run.icarl.after_task(ctx)
    previous = copy.deepcopy(run.model)  # the model as task 0 ended (3 units)
    ctx = run.start(1)
    nudge(run.model, 0.3, seed=2)  # training moved it since
    batch = run.icarl.extend_batch(ctx, batch_of(run.tasks[1], 1, [0, 1, 2, 3]))
    exemplars = batch.index == -1
    assert exemplars.sum() == 4 and (batch.task_ids[exemplars] == 0).all()
    logits = run.model(batch.x)
    units = run.scenario.targets(batch.y, batch.task_ids)
    targets = torch.zeros(len(units), 6, dtype=torch.float64)
    with torch.no_grad():
        targets[:, :3] = torch.sigmoid(previous(batch.x) / temperature)  # every example, exemplars too
    for i, unit in enumerate(units.tolist()):
        if unit >= 3:
            targets[i, unit] = 1.0  # the new classes' one-hot; an exemplar's new units stay 0
    loss = run.icarl.loss_terms(ctx, batch, logits)["icarl"]
    assert torch.allclose(loss, bce_by_hand(logits, targets), rtol=1e-12)


def features(model, x):
    with torch.no_grad():
        return model.features(x)


def test_memory_holds_floor_k_over_classes_per_class_in_herding_order():
    run = TwoTasks(memory_size=13)  # ⌊13/3⌋ = 4 per class after task 0, ⌊13/6⌋ = 2 after task 1
    expected = {}
    for task_idx in range(2):
        ctx = run.start(task_idx)
        nudge(run.model, 0.2, seed=task_idx)
        per_class = 13 // (3 * (task_idx + 1))
        train = run.tasks[task_idx].train
        phi = features(run.model, train.x)
        for label in range(3):
            members = (train.y == label).nonzero().squeeze(1)
            expected[(task_idx, label)] = train.x[members[herding(phi[members], per_class)]]
        run.icarl.after_task(ctx)
        memory = run.icarl.memory
        for (t, label), x in expected.items():
            held = memory["x"][(memory["task_ids"] == t) & (memory["y"] == label)]
            assert torch.equal(held, x[:per_class]), (task_idx, t, label)  # old classes: their first ⌊K/n⌋
        assert len(memory["y"]) == per_class * 3 * (task_idx + 1) <= 13


def test_nearest_mean_of_exemplars_prediction_by_hand():
    run = TwoTasks(memory_size=12)
    ctx = run.start(0)
    run.icarl.after_task(ctx)
    ctx = run.start(1)
    nudge(run.model, 0.2, seed=3)
    state = run.icarl.prediction_state()
    # during task 1: the memory cut to ⌊12/6⌋ = 2 per class plus task 1's live herding selection, all six classes
    assert sorted(torch.bincount(state["unit"]).tolist()) == [2] * 6

    x = run.tasks[1].val.x
    run.model.eval()
    with torch.inference_mode():
        scores = run.icarl.predictor(run.model, state)(x)
    phi = torch.nn.functional.normalize(features(run.model, x), dim=1)
    exemplar_phi = torch.nn.functional.normalize(features(run.model, state["x"]), dim=1)
    expected = torch.empty(len(x), 6, dtype=torch.float64)
    for unit in range(6):
        mean = exemplar_phi[state["unit"] == unit].mean(0)
        mean = mean / mean.norm()
        expected[:, unit] = -((phi - mean) ** 2).sum(1)
    assert torch.allclose(scores, expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(scores.argmax(1), expected.argmax(1))

    # the exemplar set evaluated at the task's last step is the one its end stores
    run.icarl.after_task(ctx)
    after = run.icarl.prediction_state()
    assert torch.equal(after["x"], state["x"]) and torch.equal(after["unit"], state["unit"])


def test_the_logits_predict_while_there_are_no_exemplars_and_units_without_any_are_never_predicted():
    run = TwoTasks(memory_size=6)
    assert run.icarl.prediction_state() == {}
    assert run.icarl.predictor(run.model, {}) is run.model
    ctx = run.start(0)
    run.icarl.after_task(ctx)
    run.start(1)
    run.icarl.live = None  # only task 0's exemplars
    state = run.icarl.prediction_state()
    with torch.inference_mode():
        scores = run.icarl.predictor(run.model, state)(run.tasks[1].val.x)
    assert torch.isneginf(scores[:, 3:]).all() and torch.isfinite(scores[:, :3]).all()


@pytest.mark.parametrize("scenario", ["task", "domain"])
def test_refused_outside_class_il(make_config, tmp_path, scenario):
    cfg = make_config(TINY, "method=icarl", f"scenario={scenario}")
    with pytest.raises(ConfigError, match=f"scenario={scenario}: ICaRL is defined only in class-IL"):
        build_method(cfg.method, cfg.scenario)
    summary, run_dir = tiny_run(tmp_path, "method=icarl", f"scenario={scenario}")
    assert summary["status"] != "ok" and "defined only in class-IL" in summary["error"]
    assert not (run_dir / "metrics.jsonl").exists()  # refused before training


def test_a_tiny_class_il_run_trains_task_a_itself_and_predicts_by_nearest_mean(tmp_path):
    baseline, _ = tiny_run(tmp_path, "method=baseline", "scenario=class", name="baseline")
    icarl, icarl_dir = tiny_run(tmp_path, "method=icarl", "scenario=class", name="icarl")
    assert icarl["status"] == "ok", icarl.get("error")
    assert icarl["first_task_cached"] is False  # its BCE trains task A
    rows = [json.loads(line) for line in (icarl_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in rows if "loss/icarl" in row]
    assert trained and all(row["loss/task"] == 0.0 for row in trained)
    assert icarl["score"] > baseline["score"]
