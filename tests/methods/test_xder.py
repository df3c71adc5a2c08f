"""X-DER (Boschini et al. 2022, Mammoth's xder_ce): the logit transplant, the buffer's update at a task's end, the
four loss terms against their formulas by hand, and the update of drawn examples' logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cl_bench.core.scenario import Scenario
from cl_bench.methods.xder import XDER, transplant
from tests.helpers.harness import batch_of, nudge, random_tasks, seeded_mlp, start_task

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_transplanted_heads_are_scaled_below_the_ground_truth_where_they_exceed_it():
    stored = torch.tensor([[3.0, 0.0, 9.0, 9.0], [1.0, 4.0, 9.0, 9.0]], dtype=torch.float64)
    current = torch.tensor([[0.0, 0.0, 6.0, 2.0], [0.0, 0.0, 2.0, 3.0]], dtype=torch.float64)
    updated = transplant(stored, current, torch.tensor([0, 1]), slice(2, None), gamma=0.5)
    # row 0: max 6 > truth 3, the new heads × 0.5·3/6; row 1: max 3 < truth 4, as they are
    assert updated.tolist() == [[3.0, 0.0, 1.5, 0.5], [1.0, 4.0, 2.0, 3.0]]
    assert stored[0, 2] == 9.0  # a new tensor


class Sequence:
    """Three class-IL tasks of two classes, a full head of six units, a float64 MLP and X-DER."""

    def __init__(self, xder: XDER):
        self.tasks = random_tasks(3, (4,), 2, n=30, seed=0, labels="cyclic")
        self.scenario = Scenario("class", [2, 2, 2], class_head="full")
        self.model = seeded_mlp((4,), 6, [5], dtype=torch.float64)
        self.xder = xder
        self.generator = torch.Generator().manual_seed(0)

    def start(self, task_idx: int):
        return start_task(self.model, self.tasks, self.scenario, task_idx, self.xder, generator=self.generator)

    def buffered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.xder.seen
        return tuple(self.xder.buffer[key][:n].clone() for key in ("x", "y", "task_ids", "logits"))


def rows_of(task, x: torch.Tensor) -> list[int]:
    return [int((task.train.x == row).all(1).nonzero()) for row in x]


def test_the_buffer_at_a_tasks_end_is_class_balanced_with_the_models_logits_transplanted_below_the_truth():
    gamma = 0.7
    seq = Sequence(XDER(buffer_size=10, gamma=gamma))
    ctx = seq.start(0)
    seq.xder.after_task(ctx)
    x, y, task_ids, logits = seq.buffered()
    assert torch.bincount(y).tolist() == [5, 5] and (task_ids == 0).all()
    rows = rows_of(seq.tasks[0], x)
    assert len(set(rows)) == 10 and torch.equal(seq.tasks[0].train.y[rows], y)
    with torch.no_grad():
        assert torch.allclose(logits, seq.model(x), rtol=1e-12)  # task 0: no past heads to transplant

    ctx = seq.start(1)
    nudge(seq.model, 0.5, seed=1)
    seq.xder.after_task(ctx)
    new_x, new_y, new_task_ids, new_logits = seq.buffered()
    assert seq.xder.seen == 10 and new_task_ids.tolist() == [0] * 4 + [1] * 6
    # the old classes keep their first 10 // 4 = 2, in buffer order; the new ones share the 6 free slots
    kept = [i for i in range(10) if sum(int(y[j] == y[i]) for j in range(i)) < 2]
    assert torch.equal(new_x[:4], x[kept]) and torch.bincount(new_y[4:]).tolist() == [3, 3]
    with torch.no_grad():
        now = seq.model(new_x)
    units = seq.scenario.targets(new_y, new_task_ids)
    for i in range(10):
        if i < 4:  # an old example: heads 1 and 2 (units 2..5) now the model's, below its stored truth
            stored, truth = logits[kept[i]], logits[kept[i], units[i]]
            expected = stored.clone()
            top = now[i, 2:].max()
            expected[2:] = now[i, 2:] * (gamma * truth / top if top > truth else 1.0)
        else:  # a new example: its past head (units 0, 1) below its own truth
            expected, truth = now[i].clone(), now[i, units[i]]
            top = now[i, :2].max()
            expected[:2] = now[i, :2] * (gamma * truth / top if top > truth else 1.0)
        assert torch.allclose(new_logits[i], expected, rtol=1e-12), i


def test_the_loss_terms_follow_the_formulas_and_drawn_examples_take_the_current_heads():
    alpha, beta, eta, margin, gamma = 0.3, 0.6, 0.2, 0.4, 0.8
    xder = XDER(buffer_size=8, alpha=alpha, beta=beta, eta=eta, margin=margin, gamma=gamma, buffer_batch_size=3)
    seq = Sequence(xder)
    seq.xder.after_task(seq.start(0))
    ctx = seq.start(1)
    nudge(seq.model, 0.5, seed=2)
    _, y_buffer, _, stored = seq.buffered()
    batch = xder.extend_batch(ctx, batch_of(seq.tasks[1], 1, range(4)))
    first, second = (draw.clone() for draw in xder.drawn)
    assert len(batch.y) == 4 + 3 + 3 and xder.task_loss_weight(ctx) == 0.0
    logits = seq.model(batch.x)
    terms = xder.loss_terms(ctx, batch, logits)
    assert set(terms) == {"stream", "der_logits", "der_labels", "future"}
    own = logits[:4]
    assert terms["stream"].item() == pytest.approx(F.cross_entropy(own[:, 2:4], batch.y[:4]).item(), rel=1e-12)
    mse = ((logits[4:7] - stored[first]) ** 2).mean()
    assert terms["der_logits"].item() == pytest.approx(alpha * mse.item(), rel=1e-12)
    ce = F.cross_entropy(logits[7:10, :2], y_buffer[second])
    assert terms["der_labels"].item() == pytest.approx(beta * ce.item(), rel=1e-12)
    slots = torch.cat([first, second])
    distinct = [i for i in range(6) if int(slots[i]) not in slots[:i].tolist()]
    rows = list(range(4)) + [4 + i for i in distinct]
    values = logits.detach()
    excess = []
    for row in rows:
        head = slice(2, 4) if row < 4 else slice(0, 2)  # buffered examples are task 0's
        excess.append(float(values[row, 4:].max() + margin - values[row, head].max()))
    violated = [e for e in excess if e > 0]
    future = sum(violated) / len(violated) if violated else 0.0
    assert violated and terms["future"].item() == pytest.approx(eta * future, rel=1e-12)
    # drawn once each in the task: every distinct drawn example took the current heads 1 and 2
    for i in distinct:
        slot, row = int(slots[i]), 4 + i
        expected = transplant(stored[slot : slot + 1], logits[row : row + 1].detach(), y_buffer[slot : slot + 1],
                              slice(2, None), gamma)
        assert torch.allclose(xder.buffer["logits"][slot], expected[0], rtol=1e-12)
    assert xder.draws[slots[distinct]].tolist() == [1.0] * len(distinct) and xder.draws.sum() == len(distinct)
