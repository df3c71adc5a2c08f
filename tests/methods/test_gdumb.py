"""GDumb (Prabhu et al. 2020): its samplers, the fit's learning rates against torch's SGDR, the fit from scratch as
stages, CutMix's loss by hand, a run whose main steps learn nothing, and its refusals."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cl_bench.core.errors import ConfigError
from cl_bench.core.scenario import Scenario
from cl_bench.methods.gdumb import GDumb, cutmix_box, warm_restarts_factors
from cl_bench.models.head import reset_parameters
from tests.helpers.harness import batch_of, nudge, random_tasks, seeded_mlp, train_context
from tests.helpers.runs import tiny_run
from tests.methods.test_der import algorithm_r

pytestmark = pytest.mark.usefixtures("one_thread")


def mammoth_schedule(epochs: int, max_lr: float, min_lr: float) -> list[float]:
    """The learning rate of each epoch of Mammoth's fit_buffer, from torch's own scheduler: a warm start at
    max_lr / 10, max_lr, then CosineAnnealingWarmRestarts(T_0=1, T_mult=2) stepped once an epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=1, T_mult=2, eta_min=min_lr)
    rates = []
    for epoch in range(epochs):
        if epoch == 0:
            optimizer.param_groups[0]["lr"] = max_lr * 0.1
        elif epoch == 1:
            optimizer.param_groups[0]["lr"] = max_lr
        else:
            optimizer.step()
            scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_the_fits_learning_rates_are_mammoths_warm_start_then_sgdr():
    factors = warm_restarts_factors(40, 0.1, 0.01)
    assert np.allclose([0.05 * f for f in factors], mammoth_schedule(40, 0.05, 0.0005), rtol=1e-12)
    assert factors[:2] == [0.1, 1.0] and warm_restarts_factors(1, 0.1, 0.01) == [0.1]


class Stream:
    """Two class-IL tasks of three classes of random 1x4x4 images and GDumb, fed as the main steps feed it."""

    def __init__(self, gdumb: GDumb):
        self.tasks = random_tasks(2, (1, 4, 4), 3, n=30, seed=0)
        self.scenario = Scenario("class", [3, 3], class_head="full")
        self.model = seeded_mlp((1, 4, 4), 6, [5], dtype=torch.float64)
        self.gdumb = gdumb
        self.generator = torch.Generator().manual_seed(0)
        self.seen: list[tuple[int, int]] = []  # (task, row) in stream order

    def feed(self, task_idx: int, batch_size: int = 4):
        ctx = train_context(self.model, self.tasks, self.scenario, task_idx, self.generator)
        for start in range(0, 30, batch_size):
            rows = list(range(start, min(start + batch_size, 30)))
            batch = batch_of(self.tasks[task_idx], task_idx, rows)
            assert self.gdumb.loss_terms(ctx, batch, self.model(batch.x)) == {}
            self.seen += [(task_idx, row) for row in rows]
        return ctx

    def held(self) -> list[tuple[int, int]]:
        """The (task, row) of every example in the memory, found by its input."""
        memory = self.gdumb.memory
        found = []
        for x, task in zip(memory["x"][: self.gdumb.filled], memory["task_ids"][: self.gdumb.filled].tolist()):
            rows = (self.tasks[task].train.x == x).flatten(1).all(1).nonzero().squeeze(1).tolist()
            found.append((task, rows[0]))
        return found


def test_the_balanced_sampler_keeps_the_first_examples_of_each_class_up_to_its_quota():
    stream = Stream(GDumb(memory_size=14, sampler="balanced"))  # 6 classes: 2 each
    stream.feed(0)
    stream.feed(1)
    expected = []
    counts: dict[int, int] = {}
    for task, row in stream.seen:
        unit = 3 * task + int(stream.tasks[task].train.y[row])
        if counts.get(unit, 0) < 14 // 6:
            counts[unit] = counts.get(unit, 0) + 1
            expected.append((task, row))
    assert stream.held() == expected and stream.gdumb.filled == 12


def test_the_reservoir_sampler_is_algorithm_r_over_the_stream():
    stream = Stream(GDumb(memory_size=10, sampler="reservoir"))
    stream.feed(0)
    stream.feed(1)
    by_hand = algorithm_r([4] * 7 + [2] + [4] * 7 + [2], size=10, seed=0)  # the draws the stream's generator gives
    assert stream.held() == [stream.seen[k] for k in by_hand] and stream.gdumb.seen == 60


def test_the_fit_starts_from_a_reinitialised_model_once_and_runs_an_epoch_a_stage():
    gdumb = GDumb(memory_size=12, fitting_epochs=5)
    stream = Stream(gdumb)
    ctx = stream.feed(0)
    nudge(stream.model, 1.0, seed=3)
    reinitialised = copy.deepcopy(stream.model)
    torch.manual_seed(7)
    reset_parameters(reinitialised)
    torch.manual_seed(7)
    stages = gdumb.stages(ctx)
    assert all(torch.equal(value, reinitialised.state_dict()[key]) for key, value in stream.model.state_dict().items())
    assert [s.steps for s in stages] == [12 // ctx.batch_size] * 5
    assert [s.lr_factor for s in stages] == warm_restarts_factors(5, 0.1, 0.01)
    assert torch.equal(stages[0].data.split.x, gdumb.memory["x"][:12])
    nudge(stream.model, 1.0, seed=4)
    moved = copy.deepcopy(stream.model.state_dict())
    again = gdumb.stages(ctx)  # asked again inside the task (a resume): the same stages, the model left alone
    assert all(torch.equal(value, moved[key]) for key, value in stream.model.state_dict().items())
    assert [s.lr_factor for s in again] == [s.lr_factor for s in stages]


def test_cutmix_mixes_a_box_of_another_image_and_the_two_labels_by_area():
    gdumb = GDumb(memory_size=12, cutmix_alpha=1.0)
    stream = Stream(gdumb)
    ctx = stream.feed(0)
    ctx.part = 1
    batch = batch_of(stream.tasks[0], 0, list(range(8)))
    logits = stream.model(batch.x)
    for seed in range(6):
        ctx.generator.manual_seed(seed)
        loss = gdumb.fit_loss(ctx, batch, logits)
        draws = torch.Generator().manual_seed(seed)  # the same draws, by hand
        if float(torch.rand((), generator=draws)) >= 0.5:
            assert loss.item() == pytest.approx(F.cross_entropy(logits, batch.y).item(), rel=1e-12)
            continue
        rng = np.random.default_rng(int(torch.randint(2**62, (), generator=draws)))
        lam = float(rng.beta(1.0, 1.0))
        other = torch.randperm(8, generator=draws)
        top, bottom, left, right = cutmix_box(4, 4, lam, rng)
        mixed = batch.x.clone()
        for i in range(8):
            mixed[i, :, top:bottom, left:right] = batch.x[int(other[i]), :, top:bottom, left:right]
        area = 1 - (bottom - top) * (right - left) / 16
        out = stream.model(mixed)
        by_hand = area * F.cross_entropy(out, batch.y) + (1 - area) * F.cross_entropy(out, batch.y[other])
        assert loss.item() == pytest.approx(by_hand.item(), rel=1e-12)


def test_a_run_learns_nothing_in_the_main_steps_and_fits_at_each_tasks_end(tmp_path):
    summary, run_dir = tiny_run(tmp_path, "method=gdumb", "scenario=class", "method.fitting_epochs=3",
                                "method.memory_size=100", "batch_size=20")
    assert summary["status"] == "ok", summary.get("error")
    rows = pd.read_json(run_dir / "metrics.jsonl", lines=True)
    for task in (0, 1):
        main = rows.query(f"task == {task} and task_step <= 30").filter(like="val/").dropna(axis=1).to_numpy()
        assert (main == main[0]).all()  # the same model from the task's start to its main steps' end
        assert rows.query(f"task == {task}")["task_step"].max() == 30 + 3 * (100 // 20)
    assert summary["train_steps"] == 2 * (30 + 15)


def test_gdumb_refuses_a_memory_smaller_than_the_classes_and_cutmix_without_images():
    with pytest.raises(ConfigError, match="method.memory_size=5: smaller than the 6 classes"):
        GDumb(memory_size=5).check(random_tasks(2, (1, 4, 4), 3, n=8, seed=0))
    with pytest.raises(ConfigError, match="method.cutmix_alpha=1.0: CutMix cuts boxes out of images"):
        GDumb(memory_size=50).check(random_tasks(2, (16,), 3, n=8, seed=0))
    GDumb(memory_size=50, cutmix_alpha=0).check(random_tasks(2, (16,), 3, n=8, seed=0))
