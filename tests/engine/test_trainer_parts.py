"""The trainer's parts through their interfaces: the settings read from the config, the evaluator,
the run's state, the task-A cache's export/import, and the one Score rule."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

import cl_bench.engine.evaluator as evaluator_module
from cl_bench.core.scenario import Scenario
from cl_bench.core.score import new_peak, peak_score
from cl_bench.data.sequences import build_task_sequence
from cl_bench.engine.evaluator import Evaluator
from cl_bench.engine.settings import Budget, OptimizerFactory, TrainerSettings, trainer_settings
from cl_bench.engine.trainer import Trainer
from cl_bench.methods.build import build_method
from cl_bench.records.summary import score_summary
from tests.helpers.config import TINY

pytestmark = pytest.mark.usefixtures("one_thread")  # the trainers here run in this process


def make_trainer(cfg: DictConfig, rows: list[dict]) -> Trainer:
    """A trainer built from `cfg` as a run builds it (same seed, same model), logging into `rows`."""
    torch.manual_seed(cfg.seed)
    tasks = build_task_sequence(cfg.dataset, cfg.task_order, cfg.seed)
    scenario = Scenario(cfg.scenario, [task.n_classes for task in tasks])
    model = instantiate(cfg.model, input_shape=tasks[0].input_shape, n_outputs=scenario.n_outputs(0))
    method = build_method(cfg.method, cfg.scenario)
    return Trainer(trainer_settings(cfg), tasks, model, method, scenario, torch.device("cpu"), rows.append)


def assert_same(a, b) -> None:
    """Equal nested dicts, lists, tensors and numbers (NaN equal to NaN)."""
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b) or (torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()))
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def test_settings_hold_the_configs_values(make_config):
    cfg = make_config(
        "first_task.steps=null", "first_task.epochs=2", "first_task.lr=0.05", "steps=30", "lr=0.01",
        "batch_size=16", "eval_batch_size=128", "eval_every=7", "checkpoint.every=11", "seed=3",
        "precision=fp32", "scenario=class", "accuracy=task_aware", "score.window=with_start",
        "optimizer_state=fresh", "optimizer=sgd",
    )
    assert trainer_settings(cfg) == TrainerSettings(
        batch_size=16,
        eval_batch_size=128,
        first_lr=0.05,
        first_budget=Budget(steps=None, epochs=2),
        lr=0.01,
        budget=Budget(steps=30, epochs=None),
        eval_every=7,
        checkpoint_every=11,
        seed=3,
        precision="fp32",
        accuracy="task_aware",
        score_window="with_start",
        optimizer_state="fresh",
        optimizer=OptimizerFactory(cfg.optimizer),
    )


def test_budgets_and_the_optimizer_factory(make_config):
    settings = trainer_settings(make_config("first_task.steps=null", "first_task.epochs=1.5", "optimizer=sgd"))
    assert settings.budget_of(0).steps_for(100, 64) == 3 and settings.budget_of(1).steps_for(100, 64) == 1000
    assert settings.lr_of(0) == 0.001 and settings.lr_of(1) == settings.lr
    optimizer = settings.optimizer.new(torch.nn.Linear(2, 2).parameters(), 0.3)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.3
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_task_a_exported_and_imported_continues_as_training_it(make_config):
    cfg = make_config(TINY)
    reference_rows: list[dict] = []
    reference = make_trainer(cfg, reference_rows)
    reference.run()

    first_rows: list[dict] = []
    first = make_trainer(cfg, first_rows)
    first.train_task(0)
    state = first.export_first_task_state()
    assert "method" not in state
    buffer = io.BytesIO()
    torch.save(state, buffer)  # as the cache stores it
    buffer.seek(0)

    rows: list[dict] = []
    cached = make_trainer(cfg, rows)
    loaded = torch.load(buffer, weights_only=True)
    result = cached.run(lambda trainer: trainer.import_first_task_state(loaded, first_rows))

    assert_same(rows, reference_rows)
    assert_same(cached.model.state_dict(), reference.model.state_dict())
    for name in ("val_matrix", "test_matrix", "best_test"):
        assert_same(getattr(result, name), getattr(reference.result, name))
    assert result.train_steps == reference.result.train_steps - 30  # task A's steps are not this run's


def test_state_dict_round_trips_into_a_new_trainer(make_config):
    cfg = make_config(TINY, "checkpoint.every=15")
    saved: list[dict] = []
    trainer = make_trainer(cfg, [])
    trainer.on_checkpoint = lambda state: saved.append(copy.deepcopy(state))  # as written to a file
    trainer.run()
    middle = saved[0]  # global step 15, half way through task A
    assert middle["task"]["step"] == 15
    restored = make_trainer(cfg, [])
    restored.load_state_dict(middle)
    assert_same(restored.state_dict(), middle)


def test_the_evaluator_evaluates_a_model_state_once_and_keeps_the_best_points_test(make_config, monkeypatch):
    cfg = make_config(TINY)
    trainer = make_trainer(cfg, [])
    calls: list[str] = []
    compute = evaluator_module.accuracies

    def counted(model, tasks, split, *args):
        calls.append(split)
        return compute(model, tasks, split, *args)

    monkeypatch.setattr(evaluator_module, "accuracies", counted)
    evaluator = Evaluator(
        trainer.tasks, trainer.scenario, 1024, contextlib.nullcontext(), "scenario", "training", trainer.method
    )
    last = len(trainer.tasks) - 1
    val = evaluator.val(trainer.model, last, 1)
    assert evaluator.val(trainer.model, last, 2) == val
    assert evaluator.best[0] == sum(val["scenario"]) / len(val["scenario"])
    test = evaluator.test(trainer.model)
    assert evaluator.best_test(trainer.model) == test and calls == ["val", "test"]
    state = evaluator.state_dict()
    again = Evaluator(
        trainer.tasks, trainer.scenario, 1024, contextlib.nullcontext(), "scenario", "training", trainer.method
    )
    again.load_state_dict(state)
    assert again.last_val == val and again.best == evaluator.best
    assert again.best_test(trainer.model) == test and calls == ["val", "test", "test"]  # not held: evaluated


@pytest.mark.parametrize(
    ("curves", "window_start", "expected_row"),
    [
        ([[0.1, 0.0], [0.9, 0.0], [0.99, 0.99], [0.9, 0.1], [0.6, 0.8], [0.5, 0.95], [0.1, 0.99]], 3, 5),
        ([[0.6, 0.4], [0.4, 0.6], [0.5, 0.5]], 0, 0),  # ties: the earliest
        ([[1.0, math.nan], [0.2, 0.4], [0.1, 0.2]], 0, 1),  # a task without accuracy: not a point
    ],
)
def test_the_score_rule_point_by_point_gives_the_peak_score(curves, window_start, expected_row):
    peak, row_of_peak = None, None
    for row in range(window_start, len(curves)):
        mean = new_peak(curves[row], peak)
        if mean is not None:
            peak, row_of_peak = mean, row
    score = peak_score(curves, window_start, list(range(len(curves))))
    assert row_of_peak == score.row == expected_row and peak == score.score
    assert score.score == pytest.approx(sum(curves[expected_row]) / 2)


@pytest.mark.parametrize("window", ["training", "with_start"])
def test_the_trainers_best_point_is_the_summarys_score(make_config, window):
    cfg = make_config(TINY, "scenario=class", "accuracy=task_aware", f"score.window={window}")
    rows: list[dict] = []
    trainer = make_trainer(cfg, rows)
    trainer.run()
    names = [task.name for task in trainer.tasks]
    assert trainer.evaluator.best[0] == score_summary(rows, names, "task_aware", window)["score"]
