"""LUCIR (Hou et al. 2019): the less-forget constraint, the margin ranking loss, λ's schedule and the imprinted rows
against their formulas by hand, the rows and parameters it keeps frozen, and its fine-tuning stages."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from cl_bench.core.errors import ConfigError
from cl_bench.core.scenario import Scenario
from cl_bench.methods.lucir import LUCIR, less_forget, margin_ranking
from cl_bench.models.cosine_head import CosineLinear
from tests.helpers.harness import batch_of, nudge, random_tasks, seeded_mlp, start_task

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_less_forget_constraint_is_one_minus_the_cosine_of_the_features():
    new = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    old = torch.tensor([[0.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    assert less_forget(new, old).item() == pytest.approx(((1 - 0.0) + (1 - 1.0)) / 2, abs=1e-12)


def test_the_margin_ranking_loss_ranks_old_classes_ground_truth_against_the_k_best_novel_scores():
    cosine = torch.tensor([[0.9, 0.1, 0.5, 0.8, 0.2],    # old class 0: novel best 0.8, 0.5
                           [0.2, 0.3, 0.6, 0.1, 0.9],    # old class 1: novel best 0.9, 0.6
                           [0.1, 0.2, 0.7, 0.3, 0.4]],   # a new class: not ranked
                          dtype=torch.float64)
    units = torch.tensor([0, 1, 2])
    m = 0.5
    pairs = [(0.9, 0.8), (0.9, 0.5), (0.3, 0.9), (0.3, 0.6)]
    by_hand = sum(max(0.0, m - (truth - novel)) for truth, novel in pairs) / len(pairs)
    assert margin_ranking(cosine, units, 2, 2, m).item() == pytest.approx(by_hand, rel=1e-12)
    assert margin_ranking(cosine[2:], units[2:], 2, 2, m).item() == 0.0  # no old-class example


class Sequence:
    """Three class-IL tasks of two classes (a grown head), a float64 MLP with LUCIR's cosine head."""

    def __init__(self, lucir: LUCIR):
        self.tasks = random_tasks(3, (4,), 2, n=30, seed=0, labels="cyclic")
        self.scenario = Scenario("class", [2, 2, 2])
        self.model = seeded_mlp((4,), 2, [5], dtype=torch.float64)
        self.model.head = lucir.head(self.model.head)
        self.lucir = lucir

    def start(self, task_idx: int):
        ctx = start_task(self.model, self.tasks, self.scenario, task_idx, self.lucir)
        ctx.data = self.lucir.train_data(ctx)
        return ctx

    def through(self, task_idx: int):
        for t in range(task_idx):
            ctx = self.start(t)
            nudge(self.model, 0.3, seed=t)
            self.lucir.stages(ctx)
            self.lucir.after_task(ctx)
        return self.start(task_idx)


def test_the_terms_follow_the_formulas_with_lambda_growing_as_the_root_of_old_over_new_classes():
    lucir = LUCIR(memory_size=12, lambda_base=5.0, lambda_mr=2.0, k_mr=2, margin=0.4)
    seq = Sequence(lucir)
    head = seq.model.head
    assert isinstance(head, CosineLinear) and head.learn_scale and head.scale.item() == 1.0
    ctx = seq.through(2)
    assert lucir.lambda_less_forget(ctx) == pytest.approx(5.0 * math.sqrt(4 / 2))
    previous = copy.deepcopy(seq.model)
    nudge(seq.model, 0.3, seed=10)
    batch = batch_of(seq.tasks[2], 2, range(6))
    batch.y[:2], batch.task_ids[:2] = torch.tensor([1, 0]), torch.tensor([0, 1])  # two old classes' examples
    logits = seq.model(batch.x)
    terms = lucir.loss_terms(ctx, batch, logits)
    features, old_features = seq.model.features(batch.x), previous.features(batch.x)
    cos = F.normalize(features, dim=1) @ F.normalize(head_weight(seq), dim=1).T
    units = seq.scenario.targets(batch.y, batch.task_ids)
    assert torch.allclose(logits, seq.model.head.scale * cos, rtol=1e-12)  # the trainer's cross-entropy is on σ·cos
    less = sum(1 - F.cosine_similarity(features[i], old_features[i], dim=0).item() for i in range(6)) / 6
    assert terms["less_forget"].item() == pytest.approx(5.0 * math.sqrt(2) * less, rel=1e-10)
    pairs = [(cos[i, units[i]].item(), novel) for i in range(2) for novel in cos[i, 4:].topk(2).values.tolist()]
    ranking = sum(max(0.0, 0.4 - (truth - novel)) for truth, novel in pairs) / len(pairs)
    assert terms["margin_ranking"].item() == pytest.approx(2.0 * ranking, rel=1e-10)


def head_weight(seq: Sequence) -> torch.Tensor:
    return seq.model.head.weight


def test_the_new_classes_rows_are_imprinted_from_their_mean_features_at_the_old_rows_mean_norm():
    seq = Sequence(LUCIR(memory_size=12))
    seq.through(1)  # task 1 started: its rows 2 and 3 imprinted
    weight = head_weight(seq).detach()
    split = seq.tasks[1].train
    with torch.no_grad():
        phi = F.normalize(seq.model.features(split.x), dim=1)
    scale = weight[:2].norm(dim=1).mean()
    for label, row in ((0, 2), (1, 3)):
        mean = phi[split.y == label].mean(0)
        assert torch.allclose(weight[row], mean / mean.norm() * scale, rtol=1e-10)


@pytest.mark.parametrize("part", [0, 1])
def test_only_the_tasks_rows_and_the_scale_move_and_in_the_fine_tuning_not_the_features(part):
    lucir = LUCIR(memory_size=12)
    seq = Sequence(lucir)
    ctx = seq.through(1)
    if part:
        lucir.stages(ctx)  # the fine-tuning's teacher, the model at the main steps' end
    ctx.part = part
    optimizer = torch.optim.SGD(seq.model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for step in range(2):
        before = copy.deepcopy(seq.model.state_dict())
        batch = batch_of(seq.tasks[1], 1, range(6 * step, 6 * step + 6))
        logits = seq.model(batch.x)
        loss = seq.scenario.loss(logits, batch.y, batch.task_ids) + sum(lucir.loss_terms(ctx, batch, logits).values())
        optimizer.zero_grad()
        loss.backward()
        lucir.after_backward(ctx)
        optimizer.step()
        lucir.after_step(ctx)
        after = seq.model.state_dict()
        assert torch.equal(after["head.weight"][:2], before["head.weight"][:2])  # the old classes' rows
        assert not torch.equal(after["head.weight"][2:], before["head.weight"][2:])
        assert not torch.equal(after["head.scale"], before["head.scale"])
        features = [key for key in after if key.startswith("features.")]
        assert all(torch.equal(after[key], before[key]) for key in features) == (part == 1)


def test_the_fine_tuning_updates_the_memory_once_and_drops_its_lr_tenfold_at_the_milestone():
    lucir = LUCIR(memory_size=12, fitting_epochs=10, finetune_lr_factor=0.5, finetune_milestone=4)
    seq = Sequence(lucir)
    ctx = seq.start(0)
    stages = lucir.stages(ctx)
    memory = {key: value.clone() for key, value in lucir.memory.memory.items()}
    assert len(memory["y"]) == 12  # the herding memory of task 0's two classes
    per_epoch = 12 // ctx.batch_size
    assert [(s.steps, s.lr_factor) for s in stages] == [(4, 0.5), (10 * per_epoch - 4, 0.05)]
    again = lucir.stages(ctx)  # asked again (a resume inside the stage): the memory is not selected again
    assert torch.equal(lucir.memory.memory["x"], memory["x"]) and again[0].data.split.x.equal(memory["x"])


def test_lucir_refuses_more_ranked_scores_than_a_tasks_classes():
    with pytest.raises(ConfigError, match="method.k_mr=3: more than the 2 classes of a task after the first"):
        LUCIR(memory_size=20, k_mr=3).check(random_tasks(3, (4,), 2, n=8, seed=0))
