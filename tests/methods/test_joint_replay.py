"""Joint training data and the Replay exemplar memory: selection, balance, batches, state."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
import torch

from cl_bench.core.scenario import Scenario
from cl_bench.data.task import Task, TensorSplit
from cl_bench.engine.run import run_experiment
from cl_bench.methods.base import Batch, Method, TrainContext
from cl_bench.methods.joint import Joint
from cl_bench.methods.replay import Replay, herding
from cl_bench.models.mlp import MLP
from tests.helpers.config import TINY
from tests.helpers.harness import batch_of, one_split_task, seeded_mlp, train_context

SHAPE = (2, 3)


def make_task(name: str, x: torch.Tensor, y: torch.Tensor, permutation: torch.Tensor | None = None) -> Task:
    return one_split_task(name, TensorSplit(x, y, permutation), int(y.max()) + 1)


def permuted_tasks(sizes: list[int], n_classes: int = 2) -> list[Task]:
    """Tasks over one pool of images, each with its own pixel permutation (the first none) and size."""
    generator = torch.Generator().manual_seed(0)
    pool = torch.randn(max(sizes), *SHAPE, generator=generator)
    tasks = []
    for t, n in enumerate(sizes):
        permutation = None if t == 0 else torch.randperm(6, generator=generator)
        tasks.append(make_task(f"t{t}", pool[:n], (torch.arange(n) + t) % n_classes, permutation))
    return tasks


def context(model: torch.nn.Module, tasks: list[Task], task_idx: int, scenario: str = "class") -> TrainContext:
    return train_context(model, tasks, Scenario(scenario, [t.n_classes for t in tasks]), task_idx)


def mlp(tasks: list[Task], hidden: list[int] | None = None) -> MLP:
    return seeded_mlp(tasks[0].input_shape, sum(t.n_classes for t in tasks), [5] if hidden is None else hidden)


def test_joint_on_the_first_task_gives_the_baseline_data():
    tasks = permuted_tasks([10, 12])
    ctx = context(mlp(tasks), tasks, 0)
    joint, baseline = Joint().train_data(ctx), Method().train_data(ctx)
    assert len(joint.split) == len(baseline.split) == 10
    assert torch.equal(joint.task_ids, baseline.task_ids)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    batches = [order[:4], order[4:8], order[8:]]
    for (xj, yj), (xb, yb) in zip(joint.split.batches(batches), baseline.split.batches(batches)):
        assert torch.equal(xj, xb) and torch.equal(yj, yb)


def test_joint_gathers_every_seen_task_with_its_permutation_and_task_id():
    tasks = permuted_tasks([5, 7, 4])
    data = Joint().train_data(context(mlp(tasks), tasks, 2))
    assert len(data.split) == 16
    assert data.task_ids.tolist() == [0] * 5 + [1] * 7 + [2] * 4
    index = torch.tensor([15, 0, 6, 11, 4, 5, 12, 3])
    x, y = data.split.gather(index)
    for row, i in enumerate(index.tolist()):
        t, local = (0, i) if i < 5 else (1, i - 5) if i < 12 else (2, i - 12)
        split = tasks[t].train
        pixels = split.x[local].flatten()
        expected = pixels if split.pixel_map is None else pixels[split.pixel_map]
        assert torch.equal(x[row], expected.view(SHAPE))
        assert y[row] == split.y[local]
        assert data.task_ids[i] == t
    assert not torch.equal(tasks[1].train.gather(torch.tensor([0]))[0], tasks[0].train.gather(torch.tensor([0]))[0])


def class_counts(replay: Replay) -> Counter:
    return Counter(zip(replay.memory["task_ids"].tolist(), replay.memory["y"].tolist()))


def assert_exemplars_are_task_examples(replay: Replay, tasks: list[Task]) -> None:
    """Every stored (x, y) is a gathered training example of its task."""
    for x, y, t in zip(replay.memory["x"], replay.memory["y"], replay.memory["task_ids"]):
        all_x, all_y = tasks[t].train.gather(torch.arange(len(tasks[t].train)))
        match = (all_x.flatten(1) == x.flatten()).all(1) & (all_y == y)
        assert match.any()


@pytest.mark.parametrize("selection", ["random", "herding"])
def test_memory_is_bounded_and_class_balanced_after_two_and_three_tasks(selection):
    tasks = permuted_tasks([20, 20, 20])
    model = mlp(tasks)
    replay = Replay(memory_size=13, selection=selection)
    expected_per_class = [6, 3, 2]  # ⌊13 / 2⌋, ⌊13 / 4⌋, ⌊13 / 6⌋
    previous = None
    for task_idx in range(3):
        replay.after_task(context(model, tasks, task_idx))
        counts = class_counts(replay)
        assert len(replay.memory["y"]) <= 13
        assert set(counts) == {(t, c) for t in range(task_idx + 1) for c in range(2)}
        assert set(counts.values()) == {expected_per_class[task_idx]}
        if previous is not None:  # old classes keep the first exemplars of their earlier share
            for key in ("x", "y", "task_ids"):
                kept = previous["rank"] < expected_per_class[task_idx]
                old = replay.memory["task_ids"] < task_idx
                assert torch.equal(replay.memory[key][old], previous[key][kept])
        previous = dict(replay.memory)
    assert_exemplars_are_task_examples(replay, tasks)


def test_random_selection_follows_the_method_generator():
    tasks = permuted_tasks([20])
    memories = []
    for seed in (0, 0, 1):
        replay = Replay(memory_size=6)
        ctx = context(mlp(tasks), tasks, 0)
        ctx.generator.manual_seed(seed)
        replay.after_task(ctx)
        memories.append(replay.memory["x"])
    assert torch.equal(memories[0], memories[1])
    assert not torch.equal(memories[0], memories[2])


def test_memory_smaller_than_the_classes_is_an_error():
    tasks = permuted_tasks([20, 20])
    Replay(memory_size=4).check(tasks)
    with pytest.raises(ValueError, match="memory_size=3"):
        Replay(memory_size=3).check(tasks)
    small = Replay(memory_size=3)  # not checked first: after_task still refuses
    small.after_task(context(mlp(tasks), tasks, 0))
    with pytest.raises(ValueError, match="memory_size=3"):
        small.after_task(context(mlp(tasks), tasks, 1))


def test_herding_picks_the_exemplars_nearest_the_normalised_mean():
    # Normalised: c=(0,1), b=(1,0), a=(0.6,0.8); mean (0.533, 0.6). a is nearest the mean (0.21 vs
    # 0.67 and 0.76); then (a+b)/2 is nearer than (a+c)/2 (0.33 vs 0.38). Without normalisation the
    # mean (2.33, 3) is nearest c, so a is the choice of the normalised features only.
    features = torch.tensor([[0.0, 1.0], [1.0, 0.0], [6.0, 8.0]])
    assert herding(features, 2).tolist() == [2, 1]
    assert herding(features, 5).tolist() == [2, 1, 0]

    x = torch.cat([features, -features])
    task = make_task("t0", x, torch.tensor([0, 0, 0, 1, 1, 1]))
    model = mlp([task], hidden=[])  # features = the flattened inputs
    model.train()
    replay = Replay(memory_size=4, selection="herding")
    replay.after_task(context(model, [task], 0))
    assert model.training
    for label, sign in ((0, 1.0), (1, -1.0)):
        mine = replay.memory["y"] == label
        order = replay.memory["rank"][mine].argsort()
        assert torch.equal(replay.memory["x"][mine][order], sign * torch.tensor([[6.0, 8.0], [1.0, 0.0]]))


def filled_replay(replay_batch_size: int | None = None) -> tuple[Replay, list[Task]]:
    tasks = permuted_tasks([20, 20, 20])
    replay = Replay(memory_size=12, replay_batch_size=replay_batch_size)
    model = mlp(tasks)
    for task_idx in range(2):
        replay.after_task(context(model, tasks, task_idx))
    return replay, tasks


def current_batch(tasks: list[Task]) -> Batch:
    return batch_of(tasks[2], 2, [3, 1, 4, 15, 9, 2, 6, 5])


def test_extend_batch_appends_distinct_exemplars_with_index_minus_one():
    replay, tasks = filled_replay(replay_batch_size=5)
    batch = current_batch(tasks)
    out = replay.extend_batch(context(mlp(tasks), tasks, 2), batch)
    assert out.x.shape == (13, *SHAPE) and out.y.shape == out.task_ids.shape == out.index.shape == (13,)
    assert torch.equal(out.x[:8], batch.x) and torch.equal(out.index[:8], batch.index)
    assert out.index[8:].tolist() == [-1] * 5
    assert set(out.task_ids[8:].tolist()) <= {0, 1}
    memory_rows = {
        (tuple(x.flatten().tolist()), int(y), int(t))
        for x, y, t in zip(replay.memory["x"], replay.memory["y"], replay.memory["task_ids"])
    }
    added = {(tuple(x.flatten().tolist()), int(y), int(t)) for x, y, t in zip(out.x[8:], out.y[8:], out.task_ids[8:])}
    assert len(added) == 5 and added <= memory_rows
    logits = mlp(tasks)(out.x)  # the extended batch goes through the scenario loss
    assert torch.isfinite(context(mlp(tasks), tasks, 2).scenario.loss(logits, out.y, out.task_ids))


def test_extend_batch_sizes():
    replay, tasks = filled_replay()
    ctx = context(mlp(tasks), tasks, 2)
    assert len(replay.extend_batch(ctx, current_batch(tasks)).y) == 8 + ctx.batch_size
    replay.replay_batch_size = 50
    everything = replay.extend_batch(ctx, current_batch(tasks))
    assert len(everything.y) == 8 + 12  # all of memory, each once
    assert sorted(everything.x[8:].flatten(1).tolist()) == sorted(replay.memory["x"].flatten(1).tolist())
    empty = Replay()
    batch = current_batch(tasks)
    assert empty.extend_batch(ctx, batch) is batch


def test_state_dict_round_trips_through_a_safe_checkpoint():
    replay, tasks = filled_replay(replay_batch_size=4)
    buffer = io.BytesIO()
    torch.save(replay.state_dict(), buffer)
    buffer.seek(0)
    restored = Replay(memory_size=12, replay_batch_size=4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.state_dict().keys() == replay.state_dict().keys()
    for key, value in replay.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value)
    first = replay.extend_batch(context(mlp(tasks), tasks, 2), current_batch(tasks))
    again = restored.extend_batch(context(mlp(tasks), tasks, 2), current_batch(tasks))
    assert torch.equal(first.x, again.x) and torch.equal(first.task_ids, again.task_ids)
    with pytest.raises(ValueError, match="keys"):
        Replay().load_state_dict({"x": torch.zeros(1)})


@pytest.mark.parametrize("weighting", ["batch", "tasks_seen"])
def test_replay_terms_weigh_the_current_and_replayed_cross_entropies(weighting):
    """batch: the task and replay terms add up to the mean cross-entropy over the combined batch;
    tasks_seen (t = 3): (1/3)·CE(current) + (2/3)·CE(replayed), each a mean over its own examples."""
    replay, tasks = filled_replay(replay_batch_size=5)
    replay.weighting = weighting
    ctx = context(mlp(tasks), tasks, 2)
    batch = replay.extend_batch(ctx, current_batch(tasks))
    logits = ctx.model(batch.x)
    loss = ctx.scenario.loss
    current = loss(logits[:8], batch.y[:8], batch.task_ids[:8])
    replayed = loss(logits[8:], batch.y[8:], batch.task_ids[8:])
    total = replay.task_loss_weight(ctx) * current + replay.loss_terms(ctx, batch, logits)["replay"]
    if weighting == "batch":
        expected = loss(logits, batch.y, batch.task_ids)
    else:
        expected = current / 3 + 2 * replayed / 3
    assert torch.allclose(total, expected, rtol=1e-6)


def test_joint_restart_trains_a_fresh_model_on_the_union(make_config, tmp_path):
    """The tutorial's multi-task row: at task B the model restarts from a new initialisation, so its
    task-B curve starts where an untrained model stands, and a fresh optimiser trains it on A∪B."""
    summaries = {}
    for restart in ("true", "false"):
        run_dir = tmp_path / restart
        run_dir.mkdir()
        cfg = make_config(TINY, "method=joint", f"method.restart={restart}", "first_task.cache=false")
        summaries[restart] = run_experiment(cfg, run_dir), run_dir
    rows = {key: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for key, (_, d) in summaries.items()}
    first_b = {key: next(r for r in found if r["task"] == 1) for key, found in rows.items()}
    a_column = "val/split_sklearn_digits.0"
    assert first_b["false"][a_column] > 0.8  # continued: task A is known at B's step 0
    assert first_b["true"][a_column] < 0.5  # restarted: an untrained model
    assert summaries["true"][0]["accuracy_matrix"][-1][0] > 0.8  # A learnt again from the union
