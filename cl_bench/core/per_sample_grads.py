"""Sums over examples of squared per-sample gradients, Σ_n (∂ℓ_n/∂θ)², from one batched backward pass.

The plain route is one backward pass per example (`cl_bench.methods.fisher.diagonal_fisher_loop`).
Here forward hooks on Linear, Conv2d and BatchNorm (eval) layers keep each layer's input `a`; when the
backward pass reaches the layer's output with gradient `g` (row n being example n's own, as the
examples do not interact), the layer's per-sample weight gradients are products of `a` and `g`,
whose squares are summed over the batch without materialising all of them at once. The values are
the plain route's up to rounding (tests/methods/test_fisher.py), at a fraction of its time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Largest per-sample gradient block (examples × weight elements) materialised at once (8 MB in float32).
CHUNK_ELEMENTS = 1 << 21
# Layer outputs with at most this many positions per example (a Linear on 2-D input: 1; a conv: its
# output pixels) take the pairwise-product matmul; measured faster up to 4-6 on a 2-core CPU.
PAIR_MAX_POSITIONS = 4


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The parameters that require grad, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _sum_sq_outer(g: Tensor, a: Tensor) -> Tensor:
    """Σ_n (g_n a_nᵀ)² for g (N, G, O, L) and a (N, G, K, L): (G, O, K), L positions per example.

    Few positions: (g_n a_nᵀ)² = Σ_{l≤m} c_lm (g_nl g_nm)(a_nl a_nm)ᵀ (c = 1 on the diagonal, 2 off
    it) makes the sum over n one matmul; L = 1 is a Linear's (g²)ᵀ(a²). Exact algebra; its rounding
    measured no worse than the per-sample route's on ResNet-18. Otherwise the per-sample products go,
    a chunk at a time, into one reused buffer whose squares are added in place.
    """
    positions = g.shape[-1]
    if positions <= PAIR_MAX_POSITIONS:
        i, j = torch.triu_indices(positions, positions, device=g.device)
        weight = torch.where(i == j, 1.0, 2.0).to(g.dtype)
        return torch.einsum("ngop,ngkp->gok", g[..., i] * g[..., j] * weight, a[..., i] * a[..., j]).clamp_(min=0)
    n, groups, outs, ins = len(g), g.shape[1], g.shape[2], a.shape[2]
    total = g.new_zeros(groups, outs, ins)
    step = max(1, min(n, CHUNK_ELEMENTS // (groups * outs * ins)))
    buffer = g.new_empty(step * groups, outs, ins)
    for start in range(0, n, step):
        g_chunk, a_chunk = g[start : start + step].flatten(0, 1), a[start : start + step].flatten(0, 1)
        block = torch.bmm(g_chunk, a_chunk.transpose(1, 2), out=buffer[: len(g_chunk)])
        for per_sample in block.view(-1, groups, outs, ins):
            total.addcmul_(per_sample, per_sample)
    return total


def _linear_rule(module: nn.Linear, a: Tensor, g: Tensor) -> dict[str, Tensor]:
    a = a.reshape(len(a), 1, -1, a.shape[-1]).transpose(-1, -2)
    g = g.reshape(len(g), 1, -1, g.shape[-1]).transpose(-1, -2)
    return {"weight": _sum_sq_outer(g, a)[0], "bias": g.sum(-1).square().sum(0)[0]}


def _patches(module: nn.Conv2d, a: Tensor) -> Tensor:
    """F.unfold(a) for the layer's geometry, (N, C·kh·kw, positions), from a strided view of the
    padded input (F.unfold is several times slower on CPU)."""
    (kh, kw), (dh, dw), (sh, sw), (ph, pw) = module.kernel_size, module.dilation, module.stride, module.padding
    a = F.pad(a, (pw, pw, ph, ph))
    n, c, h, w = a.shape
    out_h, out_w = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    stride_n, stride_c, stride_h, stride_w = a.stride()
    view = a.as_strided(
        (n, c, kh, kw, out_h, out_w), (stride_n, stride_c, stride_h * dh, stride_w * dw, stride_h * sh, stride_w * sw)
    )
    return view.reshape(n, c * kh * kw, out_h * out_w)


def _conv2d_rule(module: nn.Conv2d, a: Tensor, g: Tensor) -> dict[str, Tensor]:
    n, groups = len(a), module.groups
    cols = _patches(module, a)
    cols = cols.view(n, groups, -1, cols.shape[-1])
    g = g.reshape(n, groups, -1, cols.shape[-1])
    weight = _sum_sq_outer(g, cols).reshape(module.weight.shape)
    return {"weight": weight, "bias": g.sum(-1).square().sum(0).flatten()}


def _batchnorm_rule(module: nn.modules.batchnorm._BatchNorm, a: Tensor, g: Tensor) -> dict[str, Tensor]:
    shape = (1, -1) + (1,) * (a.dim() - 2)
    x_hat = (a - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)
    g, x_hat = g.reshape(*g.shape[:2], -1), x_hat.reshape(*a.shape[:2], -1)
    return {"weight": (g * x_hat).sum(-1).square().sum(0), "bias": g.sum(-1).square().sum(0)}


Rule = Callable[[nn.Module, Tensor, Tensor], dict[str, Tensor]]
RULES: dict[type, Rule] = {
    nn.Linear: _linear_rule,
    nn.Conv2d: _conv2d_rule,
    nn.BatchNorm1d: _batchnorm_rule,
    nn.BatchNorm2d: _batchnorm_rule,
}


def fast_path_gap(model: nn.Module) -> str | None:
    """Why the hooks cannot give exact per-sample gradients for `model`, or None when they can."""
    owners: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in owners and owners[id(p)] != name:
                return f"parameter {name}.{p_name} is shared with {owners[id(p)]}"
            owners[id(p)] = name
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        if type(module) not in RULES:
            return f"layer {name or 'model'} ({type(module).__name__}) has parameters the fast path does not cover"
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
            return (
                f"layer {name} normalises with batch statistics (no running stats), so per-sample gradients are coupled"
            )
        if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
            return f"layer {name} uses padding {module.padding!r}/{module.padding_mode}, which the fast path does not cover"
    return None


@contextmanager
def squared_grad_sums(model: nn.Module, sums: dict[str, Tensor]) -> Iterator[None]:
    """Forward hooks that, for each covered layer call, add its per-sample squared gradients to `sums`
    (by parameter name) when the backward pass reaches the layer output (hooks on the output see its
    gradient as it was before any later in-place change, e.g. ResNet's inplace ReLU)."""
    handles = []
    for name, module in model.named_modules():
        targets = {
            p_name: f"{name}.{p_name}" if name else p_name for p_name, p in module.named_parameters(recurse=False)
        }
        targets = {p_name: full for p_name, full in targets.items() if full in sums}
        if targets:
            handles.append(module.register_forward_hook(_forward_hook(RULES[type(module)], targets, sums)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _forward_hook(rule: Rule, targets: dict[str, str], sums: dict[str, Tensor]) -> Callable[..., None]:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        a = inputs[0].detach()

        def on_grad(g: Tensor) -> None:
            for p_name, value in rule(module, a, g.detach()).items():
                if p_name in targets:
                    sums[targets[p_name]] += value

        if output.requires_grad:
            output.register_hook(on_grad)

    return hook


def hooks_agree(model: nn.Module, x: Tensor) -> bool:
    """On one example `x` the per-sample squared gradient is the squared gradient: compare the hooks'
    sums to autograd's (call with the model in the mode the sums are taken in)."""
    params = trainable_parameters(model)
    hooked = {name: torch.zeros_like(p) for name, p in params.items()}
    with torch.enable_grad(), squared_grad_sums(model, hooked):
        grads = torch.autograd.grad(model(x).logsumexp(1).sum(), list(params.values()), allow_unused=True)
    for value, grad in zip(hooked.values(), grads):
        exact = torch.zeros_like(value) if grad is None else grad.square()
        if (value - exact).norm() > 1e-3 * exact.norm():
            return False
    return True
