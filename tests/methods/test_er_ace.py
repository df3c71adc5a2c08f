"""ER-ACE (Caccia et al. 2022): the asymmetric cross-entropy against its formula by hand, the replayed term, when
replay starts, the reservoir it keeps, the cosine head it brings, and its refusals."""

from __future__ import annotations

import math

import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.scenario import Scenario
from cl_bench.methods.build import build_method
from cl_bench.methods.er_ace import ERACE, asymmetric_cross_entropy
from cl_bench.models.cosine_head import CosineLinear
from tests.helpers.config import TINY
from tests.helpers.harness import batch_of, random_tasks, seeded_mlp, start_task

pytestmark = pytest.mark.usefixtures("one_thread")


def cross_entropy_over(logits: torch.Tensor, label: int, kept: list[int]) -> float:
    """−log softmax over the units `kept` of one example's logits, at `label`, written out."""
    row = logits.detach()
    return -(row[label] - math.log(sum(math.exp(row[j]) for j in kept))).item()


def test_the_asymmetric_cross_entropy_masks_the_old_classes_absent_from_the_batch():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5, 0.1, 1.5], [1.2, 0.4, -0.3, 2.2, 0.0, -0.7]], dtype=torch.float64)
    units = torch.tensor([3, 1])  # present: 1 and 3; seen so far up to 3: 0 and 2 are old and absent
    loss = asymmetric_cross_entropy(logits, units, torch.tensor(3))
    kept = [1, 3, 4, 5]  # the present units, and every unit from the largest seen on
    by_hand = (cross_entropy_over(logits[0], 3, kept) + cross_entropy_over(logits[1], 1, kept)) / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-12)
    # nothing seen beyond the batch: only the present classes and the units from the largest on
    assert asymmetric_cross_entropy(logits, units, torch.tensor(0)).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, units).item(), rel=1e-12)


class Stream:
    """Three class-IL tasks of two classes (full head of six units), a float64 MLP with ER-ACE's head."""

    def __init__(self, er_ace: ERACE):
        self.tasks = random_tasks(3, (4,), 2, n=24, seed=0, labels="cyclic")
        self.scenario = Scenario("class", [2, 2, 2], class_head="full")
        self.model = seeded_mlp((4,), 6, [5], dtype=torch.float64)
        self.model.head = er_ace.head(self.model.head)
        self.er_ace = er_ace
        self.generator = torch.Generator().manual_seed(0)

    def step(self, task_idx: int, rows: list[int]):
        ctx = start_task(self.model, self.tasks, self.scenario, task_idx, self.er_ace, generator=self.generator)
        batch = self.er_ace.extend_batch(ctx, batch_of(self.tasks[task_idx], task_idx, rows))
        logits = self.model(batch.x)
        return batch, logits, self.er_ace.loss_terms(ctx, batch, logits)


def test_the_loss_is_the_incoming_asymmetric_term_plus_the_replayed_cross_entropy_over_every_unit():
    stream = Stream(ERACE(buffer_size=50, buffer_batch_size=3, task_free=False))
    assert isinstance(stream.model.head, CosineLinear) and stream.model.head.scale.item() == 10.0
    batch, logits, terms = stream.step(0, [0, 1, 2, 3])
    assert len(batch.y) == 4 and set(terms) == {"ace"}  # the first task: no replay, no mask
    assert terms["ace"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, batch.y).item(), rel=1e-12)
    stream.step(0, [4, 5, 6, 7])
    assert stream.er_ace.buffer.seen == 8  # every incoming example offered to the reservoir

    batch, logits, terms = stream.step(1, [0, 2, 4, 6])  # only class 0 of task 1 (unit 2) in the batch
    assert len(batch.y) == 7 and (batch.index[4:] == -1).all()
    units = stream.scenario.targets(batch.y, batch.task_ids)
    assert (units[4:] < 2).all()  # replayed: task 0's examples
    kept = [2, 3, 4, 5]  # unit 2 present; 0 and 1 old and absent; 3, 4, 5 from the largest seen (2) on
    ace = sum(cross_entropy_over(logits[i], int(units[i]), kept) for i in range(4)) / 4
    replay = sum(cross_entropy_over(logits[i], int(units[i]), list(range(6))) for i in range(4, 7)) / 3
    assert terms["ace"].item() == pytest.approx(ace, rel=1e-12)
    assert terms["replay"].item() == pytest.approx(replay, rel=1e-12)
    assert stream.er_ace.task_loss_weight(None) == 0.0


def test_task_free_replays_and_masks_from_the_first_task_on():
    stream = Stream(ERACE(buffer_size=50, buffer_batch_size=3, task_free=True))
    stream.step(0, [0, 2, 4, 6])  # class 0 only: unit 1 is not masked (it is beyond the largest seen)
    batch, logits, terms = stream.step(0, [1, 3, 5, 7])  # class 1 only: unit 0 is old and absent
    assert len(batch.y) == 7 and set(terms) == {"ace", "replay"}
    ace = sum(cross_entropy_over(logits[i], 1, [1, 2, 3, 4, 5]) for i in range(4)) / 4
    assert terms["ace"].item() == pytest.approx(ace, rel=1e-12)


def test_er_ace_is_class_il_only_and_its_settings_are_checked(make_config):
    for scenario in ("task", "domain"):
        with pytest.raises(ConfigError, match="defined only in class-IL"):
            build_method(make_config(TINY, "method=er_ace").method, scenario)
    with pytest.raises(ConfigError, match="method.scale=0"):
        build_method(make_config(TINY, "method=er_ace", "method.scale=0").method, "class")
    plain = ERACE(cosine_head=False)
    linear = torch.nn.Linear(3, 2)
    assert plain.head(linear) is linear
