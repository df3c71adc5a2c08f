"""DER and DER++: logits stored at insertion, the reservoir, the loss terms against Buzzega et al.'s eq. 4 and 6
computed by hand, refusals, resume and runs."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cl_bench.core.scenario import Scenario
from cl_bench.methods.der import DER, last_writes, reservoir_slots
from tests.helpers.harness import batch_of, random_tasks, seeded_mlp, start_task
from tests.helpers.runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


class Stream:
    """DER trained as the trainer steps it (extend_batch → forward → loss_terms → backward → SGD step) on tensor
    tasks of 2 classes, recording each step's own examples and the logits the forward pass gave them."""

    def __init__(self, der: DER, scenario: str = "class", n_tasks: int = 2):
        self.tasks = random_tasks(n_tasks, (3,), 2, n=24, seed=0, labels="cyclic")
        self.scenario = Scenario(scenario, [2] * n_tasks)
        self.model = seeded_mlp((3,), self.scenario.n_outputs(0), [6], dtype=torch.float64)
        self.der = der
        self.generator = torch.Generator().manual_seed(0)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (x, logits at the step) per example, in order

    def task(self, task_idx: int, steps: int, batch_size: int = 6) -> None:
        ctx = start_task(self.model, self.tasks, self.scenario, task_idx, self.der, generator=self.generator)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=0.5)
        for step in range(steps):
            rows = torch.arange(batch_size * step, batch_size * (step + 1)) % len(self.tasks[task_idx].train)
            batch = self.der.extend_batch(ctx, batch_of(self.tasks[task_idx], task_idx, rows))
            logits = self.model(batch.x)
            loss = self.scenario.loss(logits[:batch_size], batch.y[:batch_size], batch.task_ids[:batch_size])
            loss = loss + sum(self.der.loss_terms(ctx, batch, logits).values())
            self.seen += [(batch.x[i], logits[i].detach().clone()) for i in range(batch_size)]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def test_the_buffer_holds_the_logits_of_the_step_that_inserted_each_example():
    stream = Stream(DER(buffer_size=100, alpha=0.5, beta=0.5, buffer_batch_size=4))
    stream.task(0, 4)
    stream.task(1, 4)  # the head grows from 2 to 4 units
    buffer = stream.der.buffer
    assert stream.der.seen == 48
    for slot, (x, logits) in enumerate(stream.seen):  # the buffer is not full: example k in slot k
        width = len(logits)
        assert torch.equal(buffer["x"][slot], x)
        assert buffer["units"][slot] == width == (2 if slot < 24 else 4)
        assert torch.equal(buffer["logits"][slot, :width], logits)
        assert not buffer["logits"][slot, width:].any()
    with torch.no_grad():  # the model has moved on: today's logits are not what was stored
        now = stream.model(buffer["x"][:24])[:, :2]
    assert not torch.allclose(now, buffer["logits"][:24, :2], atol=1e-3)
    assert buffer["task_ids"][:48].tolist() == [0] * 24 + [1] * 24


def test_a_full_buffer_keeps_its_size_and_holds_examples_with_their_logits_of_the_time():
    stream = Stream(DER(buffer_size=10, alpha=0.5, beta=0.5, buffer_batch_size=4), scenario="domain")
    stream.task(0, 5)
    stream.task(1, 5)
    buffer = stream.der.buffer
    assert len(buffer["y"]) == 10 and stream.der.seen == 60
    for x, logits in zip(buffer["x"], buffer["logits"]):
        matches = [z for seen_x, z in stream.seen if torch.equal(seen_x, x)]
        assert any(torch.equal(z, logits) for z in matches)


def algorithm_r(batches: list[int], size: int, seed: int) -> list[int]:
    """Vitter's algorithm R by hand, one example at a time (examples numbered 0, 1, ... in arrival order), with
    the draws the implementation makes: per batch, one uniform number per example from the generator."""
    generator = torch.Generator().manual_seed(seed)
    buffer: list[int] = []
    k = 0
    for n in batches:
        for u in torch.rand(n, generator=generator, dtype=torch.float64).tolist():
            if k < size:
                buffer.append(k)
            elif (j := int(u * (k + 1))) < size:
                buffer[j] = k
            k += 1
    return buffer


def reservoir(batches: list[int], size: int, seed: int) -> tuple[torch.Tensor, int]:
    """The implementation's buffer of example numbers, and how many batches wrote one slot twice."""
    generator = torch.Generator().manual_seed(seed)
    buffer, seen, collisions = torch.full((size,), -1), 0, 0
    for n in batches:
        slots = reservoir_slots(seen, n, size, generator)
        kept = slots[slots >= 0]
        collisions += len(kept) != len(kept.unique())
        target, source = last_writes(slots, size)
        buffer[target] = torch.arange(seen, seen + n)[source]
        seen += n
    return buffer, collisions


def test_reservoir_sampling_is_algorithm_r_example_by_example():
    batches = [3, 4, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]
    buffer, collisions = reservoir(batches, size=5, seed=3)
    assert buffer.tolist() == algorithm_r(batches, size=5, seed=3)
    assert collisions > 0  # two examples of one batch took one slot: the later one won
    first, _ = reservoir([3, 4], size=10, seed=0)
    assert first.tolist() == list(range(7)) + [-1] * 3  # while not full, examples fill the slots in order
    assert torch.equal(reservoir(batches, 5, 3)[0], buffer) and not torch.equal(reservoir(batches, 5, 4)[0], buffer)


def test_reservoir_keeps_every_example_with_probability_size_over_seen():
    size, batches, trials = 10, [8] * 10, 3000  # 80 examples: each kept with probability 1/8
    kept = Counter()
    for seed in range(trials):
        kept.update(reservoir(batches, size, seed)[0].tolist())
    expected = trials * size / 80  # 375, standard deviation 18
    assert sum(kept.values()) == trials * size
    assert all(abs(kept[k] - expected) < 75 for k in range(80)), kept


class Filled:
    """A DER whose buffer holds task 0's examples (logits of 2 units) and task 1's (4 units), in class-IL, at task 2."""

    def __init__(self, alpha: float, beta: float, m: int = 5):
        self.stream = Stream(DER(buffer_size=30, alpha=alpha, beta=beta, buffer_batch_size=m), n_tasks=3)
        self.stream.task(0, 3)
        self.stream.task(1, 3)
        self.ctx = start_task(self.stream.model, self.stream.tasks, self.stream.scenario, 2, generator=self.stream.generator)
        self.m = m

    def draws(self, n: int) -> list[torch.Tensor]:
        """The buffer slots the generator's next `n` draws pick (on a copy of it)."""
        generator = torch.Generator().set_state(self.ctx.generator.get_state())
        return [torch.randperm(30, generator=generator)[: self.m] for _ in range(n)]


@pytest.mark.parametrize("alpha, beta", [(0.3, 0.7), (0.3, 0.0)], ids=["DER++", "DER"])
def test_loss_terms_are_alpha_mse_on_stored_logits_and_beta_ce_on_labels(alpha, beta):
    filled = Filled(alpha, beta)
    der = filled.stream.der
    buffer = {key: value.clone() for key, value in der.buffer.items()}  # as the draws saw it, before the step's insertion
    picks = filled.draws(2 if beta else 1)
    own = batch_of(filled.stream.tasks[2], 2, range(6))
    batch = der.extend_batch(filled.ctx, own)
    assert len(batch.y) == 6 + 5 * len(picks)
    assert torch.equal(batch.x[:6], own.x) and batch.index[6:].tolist() == [-1] * 5 * len(picks)
    assert torch.equal(batch.x[6:], buffer["x"][torch.cat(picks)])
    logits = filled.stream.model(batch.x)
    assert logits.shape[1] == 6
    terms = der.loss_terms(filled.ctx, batch, logits)

    squares, count = 0.0, 0
    for row, slot in enumerate(picks[0].tolist()):  # each example on the units it was stored with
        units = int(buffer["units"][slot])
        squares += ((logits[6 + row, :units] - buffer["logits"][slot, :units]) ** 2).sum()
        count += units
    assert {int(buffer["units"][s]) for s in picks[0]} == {2, 4}  # both widths are in the draw
    assert torch.allclose(terms["der_logits"], alpha * squares / count, rtol=1e-12)
    if beta:
        rows = slice(11, 16)
        targets = buffer["y"][picks[1]] + 2 * buffer["task_ids"][picks[1]]  # class-IL: task t's labels at 2t
        assert torch.allclose(terms["der_labels"], beta * F.cross_entropy(logits[rows], targets), rtol=1e-12)
    else:
        assert set(terms) == {"der_logits"}


def test_the_step_s_examples_enter_the_buffer_after_the_terms_are_computed():
    filled = Filled(0.5, 0.5)
    der = filled.stream.der
    seen = der.seen
    before = {key: value.clone() for key, value in der.buffer.items()}
    batch = der.extend_batch(filled.ctx, batch_of(filled.stream.tasks[2], 2, range(6)))
    logits = filled.stream.model(batch.x)
    der.loss_terms(filled.ctx, batch, logits)
    assert der.seen == seen + 6  # only the batch's own examples are offered, replayed ones are not
    changed = (der.buffer["x"] != before["x"]).any(1)
    assert der.buffer["logits"].shape[1] == 6 and changed.any()
    assert torch.equal(der.buffer["units"][changed], torch.full((int(changed.sum()),), 6))


def test_nothing_is_drawn_before_anything_is_stored():
    stream = Stream(DER(buffer_size=10, alpha=1.0, beta=1.0))
    ctx = start_task(stream.model, stream.tasks, stream.scenario, 0, stream.der)
    batch = batch_of(stream.tasks[0], 0, range(4))
    assert stream.der.extend_batch(ctx, batch) is batch
    assert stream.der.loss_terms(ctx, batch, stream.model(batch.x)) == {}
    assert stream.der.seen == 4


def test_the_state_round_trips():
    filled = Filled(0.5, 0.5)
    restored = DER(buffer_size=30, alpha=0.5, beta=0.5, buffer_batch_size=5)
    restored.load_state_dict(filled.stream.der.state_dict())
    assert restored.seen == filled.stream.der.seen
    assert all(torch.equal(restored.buffer[k], v) for k, v in filled.stream.der.buffer.items())
    with pytest.raises(ValueError, match="keys"):
        DER().load_state_dict({"seen": 3, "x": torch.zeros(1)})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method.buffer_size=0"], "method.buffer_size=0: must be an integer ≥ 1"),
        (["method.alpha=-1"], "method.alpha=-1: must be a finite number ≥ 0"),
        (["method.beta=nan"], "method.beta=nan: must be a finite number ≥ 0"),
    ],
)
def test_bad_settings_are_refused_before_training(tmp_path, overrides, message):
    summary, _ = tiny_run(tmp_path, "method=derpp", *overrides, name="bad")
    assert summary["status"] == "failed" and message in summary["error"], summary.get("error")
    assert "train_steps" not in summary


@pytest.mark.parametrize("scenario", ["domain", "class"])
def test_der_runs_train_task_a_themselves_and_forget_less(tmp_path, scenario):
    baseline, _ = tiny_run(tmp_path, "method=baseline", f"scenario={scenario}", name="baseline")
    for method in ("der", "derpp"):
        summary, run_dir = tiny_run(tmp_path, f"method={method}", f"scenario={scenario}", name=method)
        assert summary["status"] == "ok", summary.get("error")
        assert summary["first_task_cached"] is False  # the buffer fills during task A
        rows = pd.read_json(run_dir / "metrics.jsonl", lines=True)
        assert rows.query("task == 0 and step > 0")["loss/der_logits"].notna().all()
        assert ("loss/der_labels" in rows) == (method == "derpp")
        assert summary["forgetting"]["A"] < baseline["forgetting"]["A"]
