"""KD (Learning without Forgetting): the loss against hand computation, teacher modes, grouping, state."""

from __future__ import annotations

import io

import pytest
import torch

from cl_bench.core.scenario import Scenario
from cl_bench.data.task import Task
from cl_bench.methods.base import Batch, Method
from cl_bench.methods.kd import KD, distillation_losses, equal_groups
from cl_bench.models.head import grow_head
from cl_bench.models.mlp import MLP
from tests.helpers.harness import batch_of, nudge, random_tasks, seeded_mlp, start_task, train_context

SHAPE = (6,)


def make_tasks(n_tasks: int, n_classes: int = 3, n: int = 24) -> list[Task]:
    return random_tasks(n_tasks, SHAPE, n_classes, n, seed=1, dtype=torch.float32, labels="cyclic")


def make_model(scenario: Scenario, seed: int = 0, dropout: float = 0.0) -> MLP:
    return seeded_mlp(SHAPE, scenario.n_outputs(0), [7], seed, dropout)


def perturb(model: MLP, seed: int = 5) -> None:
    """Move the student away from the teacher, as training does."""
    nudge(model, 0.5, seed)


def hand_kd(student: torch.Tensor, teacher: torch.Tensor, groups: list[tuple[int, int]], T: float) -> torch.Tensor:
    """Li & Hoiem's L_old written as in the paper: probabilities raised to 1/T and renormalised,
    −Σ y'_o log ŷ'_o with the old model's y_o as target, summed over groups, averaged over examples."""
    total = torch.zeros((), dtype=torch.float64)
    for start_unit, stop_unit in groups:
        y_o = teacher[:, start_unit:stop_unit].double().exp()
        y_o = y_o / y_o.sum(1, keepdim=True)
        y_hat = student[:, start_unit:stop_unit].double().exp()
        y_hat = y_hat / y_hat.sum(1, keepdim=True)
        y_o_t = y_o ** (1 / T) / (y_o ** (1 / T)).sum(1, keepdim=True)
        y_hat_t = y_hat ** (1 / T) / (y_hat ** (1 / T)).sum(1, keepdim=True)
        total = total - (y_o_t * y_hat_t.log()).sum(1).mean()
    return total


@pytest.mark.parametrize("T, t_squared", [(1.0, False), (2.0, False), (2.0, True)])
def test_class_il_loss_equals_hand_formula(T, t_squared):
    scenario = Scenario("class", [3, 3])
    tasks = make_tasks(2)
    model = make_model(scenario)
    kd = KD(kappa=0.7, T=T, t_squared=t_squared)
    kd.before_task(train_context(model, tasks, scenario, 0))
    batch = batch_of(tasks[1], 1, [0, 3, 5, 7, 11])
    teacher = model(batch.x).detach()  # the model as task 0 ended: 3 units
    ctx = start_task(model, tasks, scenario, 1, kd)
    perturb(model)
    logits = model(batch.x)
    terms = kd.loss_terms(ctx, batch, logits)
    expected = 0.7 * (T**2 if t_squared else 1.0) * hand_kd(logits.detach(), teacher, [(0, 3)], T)
    assert set(terms) == {"kd"}
    assert torch.allclose(terms["kd"].double(), expected, rtol=1e-5)
    swapped = 0.7 * (T**2 if t_squared else 1.0) * hand_kd(teacher, logits.detach(), [(0, 3)], T)
    assert not torch.allclose(terms["kd"].double(), swapped, rtol=1e-3)  # the two-cities post's order differs


def test_first_task_has_no_term():
    scenario = Scenario("class", [3, 3])
    tasks = make_tasks(2)
    model = make_model(scenario)
    kd = KD()
    ctx = start_task(model, tasks, scenario, 0, kd)
    batch = batch_of(tasks[0], 0, [0, 1])
    assert kd.loss_terms(ctx, batch, model(batch.x)) == {}
    assert kd.teacher.module is None


def test_gradient_is_zero_when_student_equals_teacher():
    scenario = Scenario("class", [3, 3])
    tasks = make_tasks(2)
    model = make_model(scenario)
    kd = KD(kappa=1.0, T=2.0)
    ctx = start_task(model, tasks, scenario, 1, kd)
    batch = batch_of(tasks[1], 1, [1, 2, 4, 8])
    student = model(batch.x).detach().requires_grad_()  # unchanged model: old units equal the teacher's
    kd.loss_terms(ctx, batch, student)["kd"].backward()
    assert torch.allclose(student.grad, torch.zeros_like(student.grad), atol=1e-7)
    moved = (student.detach() + torch.randn(student.shape)).requires_grad_()
    kd.loss_terms(ctx, batch, moved)["kd"].backward()
    assert moved.grad[:, :3].abs().max() > 1e-3
    assert torch.equal(moved.grad[:, 3:], torch.zeros(4, 3))  # new units are not distilled


def test_recorded_teacher_equals_live_teacher():
    scenario = Scenario("class", [3, 3])
    tasks = make_tasks(2)
    model = make_model(scenario)
    recorded, live, auto = KD(teacher="recorded"), KD(teacher="live"), KD(teacher="auto")
    grow_head(model, scenario.n_outputs(1))
    ctx = train_context(model, tasks, scenario, 1)
    rng = torch.get_rng_state()
    for method in (recorded, live, auto):
        method.before_task(ctx)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout masks stay those of the baseline
    assert recorded.recorded.shape == (len(tasks[1].train), 3)
    assert live.recorded is None
    assert auto.recorded is not None  # tensor splits are deterministic: auto records
    perturb(model)
    batch = batch_of(tasks[1], 1, [9, 2, 17, 5, 0, 23])
    results = []
    for method in (recorded, live):
        loss = method.loss_terms(ctx, batch, model(batch.x))["kd"]
        results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    (loss_r, grads_r), (loss_l, grads_l) = results
    assert torch.allclose(loss_r, loss_l, rtol=1e-6)
    for grad_r, grad_l in zip(grads_r, grads_l):
        assert torch.allclose(grad_r, grad_l, rtol=1e-5, atol=1e-8)


def test_recorded_teacher_rejects_added_examples_and_live_skips_them():
    scenario = Scenario("class", [3, 3])
    tasks = make_tasks(2)
    model = make_model(scenario)
    recorded, live = KD(teacher="recorded"), KD(teacher="live")
    for method in (recorded, live):
        ctx = start_task(model, tasks, scenario, 1, method)
    perturb(model)
    own = batch_of(tasks[1], 1, [3, 4])
    added = batch_of(tasks[0], 0, [5, 6])
    mixed = Batch(
        torch.cat([own.x, added.x]), torch.cat([own.y, added.y]), torch.cat([own.task_ids, added.task_ids]),
        torch.tensor([3, 4, -1, -1]),
    )
    with pytest.raises(RuntimeError, match="index -1"):
        recorded.loss_terms(ctx, mixed, model(mixed.x))
    only_own = live.loss_terms(ctx, own, model(own.x))["kd"]
    assert torch.allclose(live.loss_terms(ctx, mixed, model(mixed.x))["kd"], only_own, rtol=1e-6)


def train_steps(method: Method, dropout: float) -> list[torch.Tensor]:
    """Two tasks of a few SGD steps with the trainer's per-step loss; the final parameters."""
    scenario = Scenario("class", [3, 3])
    tasks = make_tasks(2)
    model = make_model(scenario, dropout=dropout)
    for task_idx in range(2):
        ctx = start_task(model, tasks, scenario, task_idx, method)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        model.train()
        for step in range(4):
            batch = method.extend_batch(ctx, batch_of(tasks[task_idx], task_idx, [step, step + 5, step + 9]))
            logits = model(batch.x)
            loss = scenario.loss(logits, batch.y, batch.task_ids) + sum(method.loss_terms(ctx, batch, logits).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        method.after_task(ctx)
    return [p.detach().clone() for p in model.parameters()]


def test_kappa_zero_trains_exactly_as_baseline():
    baseline = train_steps(Method(), dropout=0.3)
    assert all(torch.equal(a, b) for a, b in zip(baseline, train_steps(KD(kappa=0.0), dropout=0.3)))
    assert not all(torch.equal(a, b) for a, b in zip(baseline, train_steps(KD(kappa=1.0), dropout=0.3)))


@pytest.mark.parametrize(
    "name, groups",
    [
        ("class", [(0, 4)]),  # every old class in one softmax
        ("task", [(0, 2), (2, 4)]),  # each old task's head separately
        ("domain", [(0, 2)]),  # the shared head
    ],
)
def test_old_tasks_are_distilled_by_scenario_groups(name, groups):
    scenario = Scenario(name, [2, 2, 2])
    tasks = make_tasks(3, n_classes=2)
    model = make_model(scenario)
    kd = KD(kappa=1.0, T=2.0)
    for task_idx in range(2):
        start_task(model, tasks, scenario, task_idx, kd)
    perturb(model, seed=3)  # "training" task 1
    batch = batch_of(tasks[2], 2, [0, 1, 2, 3, 4, 5])
    teacher = model(batch.x).detach()  # the model as task 1 ended
    assert teacher.shape[1] == groups[-1][1]
    ctx = start_task(model, tasks, scenario, 2, kd)
    perturb(model, seed=4)
    logits = model(batch.x)
    loss = kd.loss_terms(ctx, batch, logits)["kd"]
    assert torch.allclose(loss.double(), hand_kd(logits.detach(), teacher, groups, 2.0), rtol=1e-5)
    if name == "task":  # one joint softmax over both old heads would be a different loss
        assert not torch.allclose(loss.double(), hand_kd(logits.detach(), teacher, [(0, 4)], 2.0), rtol=1e-3)


@pytest.mark.parametrize("mode", ["recorded", "live"])
def test_state_dict_round_trip_rebuilds_the_teacher(mode):
    scenario = Scenario("class", [3, 3])
    tasks = make_tasks(2)
    model = make_model(scenario)
    kd = KD(kappa=0.5, teacher=mode)
    ctx = start_task(model, tasks, scenario, 1, kd)
    perturb(model)
    batch = batch_of(tasks[1], 1, [2, 7, 19])
    expected = kd.loss_terms(ctx, batch, model(batch.x))["kd"]

    buffer = io.BytesIO()
    torch.save(kd.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["teacher"]["head.weight"].shape == (3, 7)
    assert ("recorded" in state) == (mode == "recorded")

    rebuilt_model = make_model(scenario, seed=9)  # the trainer's fresh model, then the checkpoint's weights
    grow_head(rebuilt_model, scenario.n_outputs(1))
    rebuilt_model.load_state_dict(model.state_dict())
    restored = KD(kappa=0.5, teacher=mode)
    restored.load_state_dict(state)
    restored_ctx = train_context(rebuilt_model, tasks, scenario, 1)
    assert torch.allclose(restored.loss_terms(restored_ctx, batch, rebuilt_model(batch.x))["kd"], expected)
    assert restored.state_dict().keys() == state.keys()


@pytest.mark.parametrize("reduction, per_unit", [("mean", 1 / 3), ("mean_over_groups", 1.0)])
def test_van_de_ven_weighting_and_reduction_equal_their_formula(reduction, per_unit):
    """Task-IL, third task (t = 3): L = (1/3)·L_task + (2/3)·T²·mean over the two earlier tasks of the
    distillation, averaged over each task's 3 units (their 2018 code) or summed (since 2019)."""
    scenario = Scenario("task", [3, 3, 3])
    tasks = make_tasks(3)
    model = make_model(scenario)
    lwf = KD(kappa=1.0, T=2.0, t_squared=True, weighting="tasks_seen", reduction=reduction)
    start_task(model, tasks, scenario, 0, lwf)
    start_task(model, tasks, scenario, 1, lwf)
    perturb(model, seed=3)
    batch = batch_of(tasks[2], 2, [0, 2, 4, 6, 8])
    ctx = start_task(model, tasks, scenario, 2, lwf)
    teacher = model(batch.x).detach()[:, :6]  # the model as task 1 ended
    perturb(model)
    logits = model(batch.x)
    per_task = [per_unit * hand_kd(logits.detach(), teacher, [(s, s + 3)], 2.0) for s in (0, 3)]
    expected = (1 - 1 / 3) * 4.0 * sum(per_task) / 2
    assert lwf.task_loss_weight(ctx) == pytest.approx(1 / 3)
    assert torch.allclose(lwf.loss_terms(ctx, batch, logits)["kd"].double(), expected, rtol=1e-5)
    assert KD().task_loss_weight(ctx) == 1.0  # the default: L_task + κ·L_KD


@pytest.mark.parametrize("teacher_mode", ["recorded", "live"])
@pytest.mark.parametrize("reduction, per_unit", [("mean", 1 / 6), ("mean_over_groups", 1.0)])
def test_van_de_ven_class_il_distillation_spans_the_new_units_with_zero_targets(teacher_mode, reduction, per_unit):
    """Class-IL, second task: T²·mean over the batch of −Σ_j p_j·log softmax(z/T)_j over all 6 units, p the
    teacher's softmax over the 3 old units padded with 0 for the 3 new ones (their code's `loss_fn_kd`); / 6 units in
    2018."""
    scenario = Scenario("class", [3, 3])
    tasks = make_tasks(2)
    model = make_model(scenario)
    lwf = KD(T=2.0, t_squared=True, reduction=reduction, student_units="all", teacher=teacher_mode)
    old_only = KD(T=2.0, t_squared=True, reduction=reduction, teacher=teacher_mode)  # Li & Hoiem's, the default
    batch = batch_of(tasks[1], 1, [0, 3, 5, 7, 11])
    teacher = model(batch.x).detach()
    ctx = start_task(model, tasks, scenario, 1, lwf, old_only)
    perturb(model)
    logits = model(batch.x)
    p = torch.cat([torch.softmax(teacher.double() / 2, 1), torch.zeros(5, 3, dtype=torch.float64)], 1)
    expected = 4.0 * per_unit * -(p * torch.log_softmax(logits.detach().double() / 2, 1)).sum(1).mean()
    assert torch.allclose(lwf.loss_terms(ctx, batch, logits)["kd"].double(), expected, rtol=1e-5)
    assert not torch.allclose(old_only.loss_terms(ctx, batch, logits)["kd"].double(), expected, rtol=1e-3)


def looped_kd(student: torch.Tensor, teacher: torch.Tensor, groups: list[slice], T: float, reduction: str):
    """The per-group loop the batched form replaces, written plainly."""
    per_group = []
    for units in groups:
        target = torch.softmax(teacher[:, units] / T, dim=1)
        terms = -(target * torch.log_softmax(student[:, units] / T, dim=1))
        per_group.append(terms.mean(1) if reduction == "mean" else terms.sum(1))
    total = torch.stack(per_group).sum(0)
    return total if reduction == "sum" else total / len(groups)


@pytest.mark.parametrize("reduction", ["sum", "mean_over_groups", "mean"])
@pytest.mark.parametrize("n_old", [1, 4, 20])
def test_task_il_groups_in_one_batched_op_equal_the_per_group_loop(n_old, reduction):
    scenario = Scenario("task", [3] * (n_old + 1))
    groups = scenario.old_output_groups(n_old)
    assert (equal_groups(groups) is not None) == (n_old > 1)
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(9, 3 * (n_old + 1), generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(9, 3 * n_old, generator=generator, dtype=torch.float64)
    batched = distillation_losses(student, teacher, groups, 2.0, reduction)
    looped = looped_kd(student, teacher, groups, 2.0, reduction)
    assert torch.allclose(batched, looped, rtol=1e-12)
    (g_batched,) = torch.autograd.grad(batched.sum(), student)
    (g_looped,) = torch.autograd.grad(looped.sum(), student)
    assert torch.allclose(g_batched, g_looped, rtol=1e-12, atol=1e-15)
    assert g_batched[:, 3 * n_old :].abs().max() == 0  # the new task's units get no distillation gradient


def test_groups_of_unequal_size_or_with_gaps_are_not_batched():
    assert equal_groups([slice(0, 2), slice(2, 5)]) is None
    assert equal_groups([slice(0, 2), slice(3, 5)]) is None
    assert equal_groups([slice(2, 4), slice(4, 6)]) == (slice(2, 6), 2)
    scenario = Scenario("task", [2, 3, 2])
    groups = scenario.old_output_groups(2)
    student, teacher = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    assert torch.allclose(distillation_losses(student, teacher, groups, 3.0), looped_kd(student, teacher, groups, 3.0, "sum"))


def test_recorded_targets_are_made_once_per_task_and_gathered_per_step():
    scenario = Scenario("task", [2] * 4)
    tasks = make_tasks(4, n_classes=2)
    model = make_model(scenario)
    recorded, live = KD(teacher="recorded"), KD(teacher="live")
    for task_idx in range(3):
        start_task(model, tasks, scenario, task_idx, recorded, live)
        perturb(model, seed=task_idx)
    ctx = start_task(model, tasks, scenario, 3, recorded, live)
    perturb(model, seed=7)
    for rows in ([0, 5, 9], [3, 4, 20, 21]):
        batch = batch_of(tasks[3], 3, rows)
        logits = model(batch.x)
        assert torch.allclose(recorded.loss_terms(ctx, batch, logits)["kd"], live.loss_terms(ctx, batch, logits)["kd"])
    made = recorded._recorded_targets
    assert made is not None and made.shape == (len(tasks[3].train), 6)
    recorded.loss_terms(ctx, batch_of(tasks[3], 3, [1]), model(tasks[3].train.x[:1]))
    assert recorded._recorded_targets is made
    start_task(model, tasks, scenario, 3, recorded)  # a task's start records again
    assert recorded._recorded_targets is None
