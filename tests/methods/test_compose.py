"""Several methods in one run (methods/compose.py): the terms each part computes and on which examples,
the task weight, the order of gradient edits, hooks no part defines, conflicts, and the config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cl_bench.core.errors import ConfigError
from cl_bench.core.experiment import method_label
from cl_bench.core.scenario import Scenario
from cl_bench.methods.base import Batch, Method, TrainContext, defined_hook
from cl_bench.methods.build import build_methods
from cl_bench.methods.compose import Combined
from cl_bench.methods.kd import KD
from cl_bench.methods.replay import Replay
from cl_bench.methods.si import SI
from cl_bench.report.entries import methods_selectable
from tests.helpers.harness import batch_of, random_tasks, seeded_mlp, start_task
from tests.helpers.runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def kd_plus_replay(weighting: str = "sum") -> tuple[Combined, KD, Replay, TrainContext, Batch]:
    """KD (recorded teacher) + Replay after task 0 of three two-class tasks, at task 1's start; a batch of task 1."""
    tasks = random_tasks(3, (4,), 2, 16, seed=0, dtype=torch.float32)
    scenario = Scenario("class", [2, 2, 2])
    model = seeded_mlp((4,), 2, [6])
    kd, replay = KD(kappa=0.7, T=2.0, teacher="recorded", weighting=weighting), Replay(memory_size=6, replay_batch_size=5)
    combined = Combined({"method": kd, "plus.replay": replay})
    ctx0 = start_task(model, tasks, scenario, 0, combined)
    combined.after_task(ctx0)
    ctx = start_task(model, tasks, scenario, 1, combined)
    return combined, kd, replay, ctx, batch_of(tasks[1], 1, [3, 1, 4, 15, 9, 2, 6, 5])


@pytest.mark.parametrize("weighting", ["sum", "tasks_seen"])
def test_kd_plus_replay_terms_are_each_methods_terms_as_defined(weighting):
    """KD distils the old units on the task's own examples only; replay's cross-entropy is on the replayed
    exemplars, weighted by their share of the batch; the task term's weight is the product of the parts'."""
    combined, kd, replay, ctx, own = kd_plus_replay(weighting)
    teacher = kd.recorded[own.index]  # the previous model's outputs, recorded at the task's start
    generator_state = ctx.generator.get_state()
    batch = combined.extend_batch(ctx, own)
    assert len(batch.y) == 8 + 5 and batch.index[8:].tolist() == [-1] * 5
    logits = ctx.model(batch.x)
    terms = combined.loss_terms(ctx, batch, logits)
    assert set(terms) == {"kd", "replay"}

    old = slice(0, 2)  # class-IL: the previous task's units, one softmax group
    distill = -(F.softmax(teacher[:, old] / 2, 1) * F.log_softmax(logits[:8, old] / 2, 1)).sum(1).mean()
    kd_scale = 0.7 * (0.5 if weighting == "tasks_seen" else 1.0)
    torch.testing.assert_close(terms["kd"], kd_scale * distill)
    replayed = F.cross_entropy(logits[8:], ctx.scenario.targets(batch.y[8:], batch.task_ids[8:]))
    torch.testing.assert_close(terms["replay"], 5 / 13 * replayed)
    kd_task_weight = 0.5 if weighting == "tasks_seen" else 1.0
    assert combined.task_loss_weight(ctx) == pytest.approx(kd_task_weight * 8 / 13)

    ctx.generator.set_state(generator_state)  # replay alone draws the same exemplars
    assert torch.equal(replay.extend_batch(ctx, own).x, batch.x)


class Projecting(Method):
    gradient_edit_order = 1

    def __init__(self, calls: list[str]):
        self.calls = calls

    def after_backward(self, ctx: TrainContext) -> None:
        self.calls.append("projection")


class Penalising(Method):
    def __init__(self, calls: list[str]):
        self.calls = calls

    def after_backward(self, ctx: TrainContext) -> None:
        self.calls.append("penalty")


class Extending(Method):
    owns = frozenset({"batch"})

    def extend_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        return batch


def test_gradient_edits_run_penalties_first_and_projections_last():
    calls: list[str] = []
    combined = Combined({"method": Projecting(calls), "plus.penalty": Penalising(calls)})
    combined.after_backward(None)
    assert calls == ["penalty", "projection"]


def test_a_hook_no_part_defines_is_not_called_and_one_that_a_part_defines_is():
    kd_replay = kd_plus_replay()[0]
    assert defined_hook(kd_replay, "after_backward") is None and defined_hook(kd_replay, "after_step") is None
    assert defined_hook(kd_replay, "predictor") is None and defined_hook(kd_replay, "penalty_values") is None
    with_si = Combined({"method": KD(), "plus.si": SI()})
    assert defined_hook(with_si, "after_backward") is not None and defined_hook(with_si, "after_step") is not None
    assert defined_hook(with_si, "penalty_values") is not None
    assert with_si.changes_first_task  # SI's path integral runs on task A


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({"method": Replay(), "plus.other": Extending()}, "method and plus.other both adds examples to each batch"),
        ({"method": KD(), "plus.kd": KD()}, "method and plus.kd are both KD: combine a method once"),
    ],
)
def test_conflicting_parts_are_refused(parts, message):
    with pytest.raises(ConfigError, match=message):
        Combined(parts)


def test_the_config_combines_methods_with_their_own_parameters(make_config):
    cfg = make_config("method=kd", "method.kappa=2", "plus=[replay,si]", "plus.replay.memory_size=300", "plus.si.c=5")
    method = build_methods(cfg)
    kd, replay, si = method.parts.values()
    assert (kd.kappa, replay.memory_size, si.c) == (2.0, 300, 5.0)
    assert method_label(cfg) == "KD + Replay + SI"
    assert methods_selectable(cfg) == ["method.kappa", "method.T", "plus.replay.memory_size", "plus.si.c"]
    assert type(build_methods(make_config("method=kd"))) is KD  # one method: itself, as before
    with pytest.raises(ConfigError, match=r"plus\.replay\.memory_size=0: must be an integer ≥ 1"):
        build_methods(make_config("method=kd", "plus=[replay]", "plus.replay.memory_size=0"))
    with pytest.raises(ConfigError, match="method and plus.kd are both KD"):
        build_methods(make_config("method=kd", "plus=[kd]"))
    renamed = r"^plus\.ewc\.fisher_label='true': now called empirical \(plus\.ewc\.fisher_label"
    with pytest.raises(ConfigError, match=renamed):
        build_methods(make_config("method=kd", "plus=[ewc]", "plus.ewc.fisher_label=true"))


def test_a_parts_data_check_names_its_own_keys():
    """A combined method's `check(tasks)` error names the key the user set, under `plus`."""
    tasks = random_tasks(2, (3,), 2, n=12, seed=0)
    combined = Combined({"method": KD(), "plus.replay": Replay(memory_size=3)})
    with pytest.raises(ConfigError, match=r"^plus\.replay\.memory_size=3: smaller than the 4 classes"):
        combined.check(tasks)


def test_a_combined_run_logs_each_parts_terms_and_names_the_row(tmp_path):
    summary, run_dir = tiny_run(tmp_path, "method=kd", "plus=[replay]", "plus.replay.memory_size=100")
    assert summary["status"] == "ok", summary.get("error")
    assert summary["method"] == "KD + Replay"
    assert summary["method_params"]["plus.replay"]["memory_size"] == 100
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss/task", "loss/kd", "loss/replay"} <= set(header)
