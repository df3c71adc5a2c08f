"""Diagonal Fisher information: the mean over examples of squared per-sample gradients of log p(y|x),

    F_i = (1/N) Σ_n (∂ log p(y_n | x_n) / ∂θ_i)²   (Kirkpatrick et al. 2017, the diagonal of the Fisher),

p = softmax(scenario.restrict(logits, task_ids)), the model in eval mode. The label y is chosen by `label`:

- ``empirical``: the data label (the empirical Fisher of the split-MNIST EWC tutorial and Sörberg's report);
- ``sample``: drawn from p(·|x) (Kirkpatrick et al.), by inverse CDF from uniforms drawn with the
  given generator for the whole index up front, so the draw does not depend on batching;
- ``empirical_weighted``: the data label's, its squared gradient weighted by its probability p(y|x) (detached;
  Mammoth's online EWC, Buzzega et al. 2020);
- ``argmax``: the most probable allowed class;
- ``expected``: the exact expectation Σ_c p(c|x)·(∂ log p(c|x))², p detached. It costs one backward
  pass per class that has non-zero probability for some example of the batch.

`diagonal_fisher_loop` is the definition, one backward pass per example; `diagonal_fisher` gives the
same from one batched backward pass per label pass (`cl_bench.core.per_sample_grads`) and falls
back to the loop, with a warning, for a model that route does not cover.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from cl_bench.core.per_sample_grads import fast_path_gap, hooks_agree, squared_grad_sums, trainable_parameters
from cl_bench.core.scenario import Scenario
from cl_bench.data.task import Split

LABELS = ("empirical", "empirical_weighted", "sample", "argmax", "expected")


def diagonal_fisher(
    model: nn.Module,
    split: Split,
    index: Tensor,
    task_id: int,
    scenario: Scenario,
    label: str = "empirical",
    batch_size: int = 128,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Diagonal Fisher of the trainable parameters on `split.gather(index)`, by name (batched route)."""
    uniforms = _uniforms(label, len(index), generator)
    gap = fast_path_gap(model)
    if gap is None and not _probe_agrees(model, split, index[:1]):
        gap = "a one-example check of the per-sample gradient hooks failed (a parameter is reused or used outside its layer)"
    if gap is not None:
        warnings.warn(f"diagonal_fisher: {gap}; using the per-sample loop", stacklevel=2)
        return diagonal_fisher_loop(model, split, index, task_id, scenario, label, batch_size, generator)
    params = trainable_parameters(model)
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    with eval_mode(model), torch.enable_grad(), squared_grad_sums(model, sums):
        for x, objective in _objectives(model, split, index, task_id, scenario, label, batch_size, uniforms):
            inputs = [x] if x.requires_grad else list(params.values())
            torch.autograd.grad(objective, inputs, retain_graph=True)
    return {name: total / len(index) for name, total in sums.items()}


def diagonal_fisher_loop(
    model: nn.Module,
    split: Split,
    index: Tensor,
    task_id: int,
    scenario: Scenario,
    label: str = "empirical",
    batch_size: int = 128,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The definition: one forward and backward pass per example (and per class for `expected`)."""
    params = trainable_parameters(model)
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    uniforms = _uniforms(label, len(index), generator)
    with eval_mode(model), torch.enable_grad():
        for start in range(0, len(index), batch_size):
            x, y = split.gather(index[start : start + batch_size])
            for i in range(len(y)):
                u = None if uniforms is None else uniforms[start + i : start + i + 1]
                log_p = _log_probs(model, x[i : i + 1], task_id, scenario)
                for objective in _label_passes(log_p, y[i : i + 1], task_id, scenario, label, u):
                    grads = torch.autograd.grad(objective, list(params.values()), retain_graph=True, allow_unused=True)
                    for name, grad in zip(params, grads):
                        if grad is not None:
                            sums[name] += grad.square()
    return {name: total / len(index) for name, total in sums.items()}


def _probe_agrees(model: nn.Module, split: Split, index: Tensor) -> bool:
    """Whether the hooks give autograd's squared gradient on the example `index` (in eval mode)."""
    with eval_mode(model):
        return hooks_agree(model, split.gather(index)[0])


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (frozen BatchNorm statistics, no dropout), restoring every module's mode after."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def _uniforms(label: str, n: int, generator: torch.Generator | None) -> Tensor | None:
    """The uniforms `sample` draws its labels from, one per example; None for other labels."""
    if label not in LABELS:
        raise ValueError(f"label={label!r}: choose one of {', '.join(LABELS)}")
    if n == 0:
        raise ValueError("the Fisher needs at least one example")
    if label != "sample":
        return None
    if generator is None:
        raise ValueError("label='sample' needs a torch.Generator for reproducible draws")
    return torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)


def _log_probs(model: nn.Module, x: Tensor, task_id: int, scenario: Scenario) -> Tensor:
    logits = model(x)
    task_ids = torch.full((len(x),), task_id, dtype=torch.long, device=logits.device)
    return torch.log_softmax(scenario.restrict(logits, task_ids), dim=1)


def _label_passes(
    log_p: Tensor, y: Tensor, task_id: int, scenario: Scenario, label: str, uniforms: Tensor | None
) -> list[Tensor]:
    """Scalar objectives whose per-sample squared gradients add up to the Fisher contribution."""
    if label == "expected":
        p = log_p.detach().exp()
        live = (p > 0).any(0).nonzero().squeeze(1).tolist()
        return [(p[:, c].sqrt() * log_p[:, c]).sum() for c in live]
    if label in ("empirical", "empirical_weighted"):
        task_ids = torch.full_like(y, task_id)
        units = scenario.targets(y, task_ids)
        if label == "empirical_weighted":
            log_p_y = log_p.gather(1, units[:, None]).squeeze(1)
            return [(log_p_y.detach().exp().sqrt() * log_p_y).sum()]
    elif label == "argmax":
        units = log_p.argmax(1)
    else:
        units = _sample(log_p.detach().exp(), uniforms.to(log_p.device))
    return [log_p.gather(1, units[:, None]).sum()]


def _sample(p: Tensor, uniforms: Tensor) -> Tensor:
    """Inverse-CDF draw of one unit per row; never a unit of zero probability."""
    cdf = p.double().cumsum(1)
    units = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).squeeze(1)
    return torch.minimum(units, cdf.argmax(1))


def _objectives(
    model: nn.Module,
    split: Split,
    index: Tensor,
    task_id: int,
    scenario: Scenario,
    label: str,
    batch_size: int,
    uniforms: Tensor | None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """(input, objective) for every label pass of every batch; inputs require grad when they can."""
    for start in range(0, len(index), batch_size):
        x, y = split.gather(index[start : start + batch_size])
        if x.is_floating_point():
            x = x.detach().requires_grad_(True)
        u = None if uniforms is None else uniforms[start : start + len(y)]
        log_p = _log_probs(model, x, task_id, scenario)
        for objective in _label_passes(log_p, y, task_id, scenario, label, u):
            yield x, objective
