"""The diagonal Fisher: the batched hooks against the per-sample loop, and the loop against closed forms."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.core import per_sample_grads
from cl_bench.core.scenario import Scenario
from cl_bench.methods import fisher
from cl_bench.methods.fisher import LABELS, diagonal_fisher, diagonal_fisher_loop
from cl_bench.models.mlp import MLP
from cl_bench.models.resnet import resnet18
from tests.helpers.harness import random_split

pytestmark = pytest.mark.usefixtures("one_thread")


class OddConvNet(nn.Module):
    """Grouped, dilated, strided convs with BatchNorm, and a Linear over a token axis (3-D input)."""

    def __init__(self, n_outputs: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
            nn.BatchNorm2d(6),
            nn.ReLU(),
        )
        self.tokens = nn.Linear(6, 5)
        self.norm = nn.BatchNorm1d(5)
        self.head = nn.Linear(5, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(torch.relu(self.tokens(h)).mean(1)))


class ReusedWeight(nn.Module):
    """Uses `features.weight` a second time outside its layer: per-sample hooks cannot see that."""

    def __init__(self):
        super().__init__()
        self.features = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.features(x))
        return self.head(h @ self.features.weight.T)


def randomise_batchnorm(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, as after training."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)


def relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-300)) for k in a)


def both(model, split, task_id, scenario, label, batch_size=5):
    """The fast path (which must not fall back) and the loop, with equal generators."""
    index = torch.arange(len(split))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = diagonal_fisher(
            model, split, index, task_id, scenario, label, batch_size, torch.Generator().manual_seed(7)
        )
    loop = diagonal_fisher_loop(
        model, split, index, task_id, scenario, label, batch_size, torch.Generator().manual_seed(7)
    )
    return fast, loop


@pytest.mark.parametrize("label", LABELS)
def test_fast_equals_loop_on_mlp_with_task_masking(label):
    torch.manual_seed(0)
    model = MLP((1, 4, 4), 6, [12, 8]).double()
    fast, loop = both(model, random_split(11, (1, 4, 4), 3), 1, Scenario("task", [3, 3]), label)
    assert relative_error(fast, loop) < 1e-8


@pytest.mark.parametrize("label", LABELS)
def test_fast_equals_loop_on_resnet18_with_batchnorm(label):
    torch.manual_seed(0)
    model = resnet18((3, 16, 16), 5).double()
    randomise_batchnorm(model)
    fast, loop = both(model, random_split(6, (3, 16, 16), 5), 0, Scenario("class", [5]), label, batch_size=4)
    assert relative_error(fast, loop) < 1e-8


@pytest.mark.parametrize("pair_max, chunk", [(0, 1), (0, 700), (0, 1 << 21), (1000, 1)])
@pytest.mark.parametrize("label", ["empirical", "expected"])
def test_fast_equals_loop_on_grouped_dilated_convs(monkeypatch, pair_max, chunk, label):
    """Per-sample products in chunks of every size, and pairwise products for every layer."""
    monkeypatch.setattr(per_sample_grads, "PAIR_MAX_POSITIONS", pair_max)
    monkeypatch.setattr(per_sample_grads, "CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    model = OddConvNet(4).double()
    randomise_batchnorm(model)
    fast, loop = both(model, random_split(9, (3, 7, 7), 4), 0, Scenario("domain", [4]), label)
    assert relative_error(fast, loop) < 1e-8


def test_loop_matches_closed_form_of_a_softmax_regression_under_task_masking():
    """For logits = Wx + b the per-sample gradient of log p_y is (e_y − p)xᵀ, p over the task's units."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 4)).double()
    split = random_split(7, (5,), 2)
    scenario = Scenario("task", [2, 2])
    result = diagonal_fisher_loop(model, split, torch.arange(7), 1, scenario, "empirical", 3)
    logits = model(split.x).detach()[:, 2:]
    residual = F.one_hot(split.y, 2).double() - logits.softmax(1)
    residual = torch.cat([torch.zeros_like(residual), residual], 1)
    assert torch.allclose(result["1.weight"], (residual.square().T @ split.x.square()) / 7, rtol=1e-12)
    assert torch.allclose(result["1.bias"], residual.square().mean(0), rtol=1e-12)


def test_expected_is_the_probability_weighted_sum_over_labels():
    torch.manual_seed(0)
    model = MLP((3,), 4, [5]).double()
    split = random_split(6, (3,), 4)
    scenario = Scenario("class", [4])
    params = dict(model.named_parameters())
    by_hand = {name: torch.zeros_like(p) for name, p in params.items()}
    for x in split.x:
        log_p = torch.log_softmax(model(x[None]), 1)[0]
        for c in range(4):
            grads = torch.autograd.grad(log_p[c], list(params.values()), retain_graph=True)
            for name, grad in zip(params, grads):
                by_hand[name] += log_p[c].exp().detach() * grad.square() / len(split)
    result = diagonal_fisher(model, split, torch.arange(6), 0, scenario, "expected", 4)
    assert relative_error(result, by_hand) < 1e-10


def test_empirical_weighted_is_mammoths_probability_weighted_empirical_fisher():
    """Mammoth's online EWC: Σ_n p(y_n|x_n)·(∂ log p(y_n|x_n))² / N, one backward pass per example, y the data label."""
    torch.manual_seed(0)
    model = MLP((3,), 4, [5]).double()
    split = random_split(6, (3,), 4)
    scenario = Scenario("class", [4])
    params = dict(model.named_parameters())
    by_hand = {name: torch.zeros_like(p) for name, p in params.items()}
    for x, y in zip(split.x, split.y):
        log_p_y = torch.log_softmax(model(x[None]), 1)[0, y]
        for name, grad in zip(params, torch.autograd.grad(log_p_y, list(params.values()))):
            by_hand[name] += log_p_y.exp().detach() * grad.square() / len(split)
    result = diagonal_fisher(model, split, torch.arange(6), 0, scenario, "empirical_weighted", 4)
    assert relative_error(result, by_hand) < 1e-10
    empirical = diagonal_fisher(model, split, torch.arange(6), 0, scenario, "empirical", 4)
    assert relative_error(result, empirical) > 0.1  # the weights matter


def test_sample_is_reproducible_from_the_generator_and_draws_labels():
    torch.manual_seed(0)
    model = MLP((3,), 4, [5]).double()
    split, scenario, index = random_split(40, (3,), 4), Scenario("class", [4]), torch.arange(40)

    def run(seed):
        return diagonal_fisher(model, split, index, 0, scenario, "sample", 16, torch.Generator().manual_seed(seed))

    assert relative_error(run(1), run(1)) == 0
    assert relative_error(run(1), run(2)) > 1e-6
    with pytest.raises(ValueError, match="Generator"):
        diagonal_fisher(model, split, index, 0, scenario, "sample", 16)


def test_sampled_units_follow_the_cdf_and_skip_zero_probability():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.25, 0.75, 0.0]])
    uniforms = torch.tensor([0.1, 0.1, 0.7, 0.3, 1.0, 1.0], dtype=torch.float64)  # 1.0: past torch.rand's range
    assert fisher._sample(p.repeat(3, 1), uniforms).tolist() == [0, 1, 1, 2, 1, 2]


def test_model_mode_is_restored_and_no_grad_is_left():
    torch.manual_seed(0)
    model = OddConvNet(3).double()
    model.train()
    model.norm.eval()
    diagonal_fisher(model, random_split(4, (3, 6, 6), 3), torch.arange(4), 0, Scenario("domain", [3]), "empirical", 2)
    assert model.training and model.features[1].training and not model.norm.training
    assert all(p.grad is None for p in model.parameters())
    before = model.norm.running_mean.clone()
    diagonal_fisher_loop(model, random_split(4, (3, 6, 6), 3), torch.arange(4), 0, Scenario("domain", [3]), "empirical", 2)
    assert torch.equal(model.norm.running_mean, before)


@pytest.mark.parametrize("layer_norm", [True, False])
def test_models_the_hooks_cannot_handle_fall_back_to_the_loop(layer_norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3)) if layer_norm else ReusedWeight()
    model, reason = model.double(), "does not cover" if layer_norm else "check"
    split, scenario, index = random_split(5, (4,), 3), Scenario("class", [3]), torch.arange(5)
    with pytest.warns(UserWarning, match=reason):
        fast = diagonal_fisher(model, split, index, 0, scenario, "empirical", 2)
    assert relative_error(fast, diagonal_fisher_loop(model, split, index, 0, scenario, "empirical", 2)) < 1e-12


def test_shared_parameters_and_batch_statistics_are_detected():
    shared = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    shared[1].weight = shared[0].weight
    assert "shared" in fisher.fast_path_gap(shared)
    assert "batch statistics" in fisher.fast_path_gap(
        nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False))
    )
    assert fisher.fast_path_gap(resnet18((3, 16, 16), 3)) is None


def test_frozen_parameters_are_left_out():
    model = MLP((3,), 4, [5]).double()
    model.features[1].weight.requires_grad_(False)
    result = diagonal_fisher(model, random_split(4, (3,), 4), torch.arange(4), 0, Scenario("class", [4]), "empirical", 2)
    assert sorted(result) == ["features.1.bias", "head.bias", "head.weight"]
