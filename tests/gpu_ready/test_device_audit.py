"""Where every tensor lives: after a run, each tensor of its state (the model, every method's `state_dict()` with its
teachers, buffers, Fisher and penalty terms, stored logits and exemplars, the Score's snapshot, the optimiser, the
loss sums) is on the run's device, unless it is declared host-side on purpose: a method's `host_state` keys
(methods/base.py), the CPU random streams and torch.optim's step counts (HOST_SIDE below). And no tensor factory in
cl_bench/methods/ or cl_bench/engine/ is called without a device, except those listed with their reason.

On the CPU every tensor is on the run's device, so there the audit runs its code over every method's state and
checks that each host-side declaration names a key the state holds; on CUDA (the GPU tier) it is the real check.
The walk itself is checked here on tensors of the `meta` device."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class

import cl_bench
from cl_bench.records.checkpoint import load_checkpoint
from tests.helpers.config import TINY, compose_config
from tests.helpers.devices import DEVICES, on
from tests.helpers.methods import COMBINATIONS, EVERY_METHOD, method_names
from tests.helpers.runs import tiny_run

# Tensors of a run's state kept on the host on purpose, whatever its device (dotted paths; * matches one key).
HOST_SIDE = {
    "rng": "the CPU random stream (torch.manual_seed's): the same draws on every device",
    "sampler_rng": "the batch sampler's CPU generator: the same batches on every device",
    "method_rng": "the methods' CPU generator: the same draws (exemplars, replayed examples) on every device",
    "cuda_rng": "the CUDA generator's state (dropout on the GPU): a ByteTensor torch keeps on the host",
    "task.sampler_state": "the sampler's state the task's batches were drawn from (a CPU generator's)",
    "task.stage_sampler_state": "the same, for a method's stage",
    "optimizer.state.*.step": "torch.optim keeps step counts on the host unless capturable or fused",
}
ROOT = Path(cl_bench.__file__).parent
AUDITED = ("core", "methods", "engine")
FACTORIES = {
    "tensor", "as_tensor", "asarray", "scalar_tensor", "zeros", "ones", "full", "empty", "empty_strided", "arange",
    "range", "linspace", "logspace", "eye", "rand", "randn", "randint", "randperm", "tril_indices", "triu_indices",
}
# Factory calls without a device in cl_bench/methods/ and cl_bench/engine/ ("<file>::<function>::<factory>"): each
# result stays on the host on purpose, or is moved to a device where it is used.
HOST_FACTORIES = {
    "methods/base.py::task_split::full": "task ids: the trainer moves them to the device once per task",
    "methods/e2e.py::E2E.balanced_data::full": "task ids, likewise",
    "methods/replay.py::herding::tensor": "positions in the host-side label list the caller indexes",
    "methods/replay.py::Replay._exemplars::randperm": "the method's CPU generator; indexes the host-side labels",
    "methods/replay.py::Replay._exemplars::arange": "ranks, moved to the exemplars' device in the same expression",
    "methods/replay.py::Replay.extend_batch::randperm": "the method's CPU generator; moved to the memory's device",
    "methods/agem.py::AGEM.reference_batch::randperm": "the method's CPU generator; moved to the memory's device",
    "methods/der.py::reservoir_slots::arange": "the reservoir's bookkeeping on the host (the method's CPU generator)",
    "methods/der.py::reservoir_slots::rand": "the method's CPU generator; the slots move to the buffer's device",
    "methods/der.py::last_writes::arange": "the reservoir's bookkeeping on the host",
    "methods/der.py::last_writes::full": "the reservoir's bookkeeping on the host",
    "methods/der.py::DER.extend_batch::randperm": "the method's CPU generator; moved to the buffer's device",
    "methods/ewc.py::EWC.importance::randperm": "Fisher samples' positions, gathered by the split on its device",
    "methods/mas.py::MAS.importance::randperm": "importance samples' positions, gathered by the split on its device",
    "methods/base.py::OwnModel.ready::randint": "a seed for the own model's initialisation, from the run's CPU "
                                                "generator",
    "methods/gem.py::GEM.after_task::randperm": "the run's CPU generator; positions gathered by the split on its device",
    "methods/generative_replay.py::GenerativeReplay._noise::randn": "the run's CPU generator (the same codes on every "
                                                                    "device); moved to the device in the expression",
    "methods/generative_replay.py::GenerativeReplay._replay::randn": "likewise",
    "methods/generative_replay.py::GenerativeReplay._replay::arange": "task ids, moved to the device in the expression",
    "methods/bic.py::BiC.__init__::zeros": "the corrected task's unit range: two ints of host bookkeeping",
    "methods/bic.py::BiC.load_state_dict::zeros": "likewise, its default",
    "methods/bic.py::BiC.stages::tensor": "likewise, set for the task being corrected",
    "methods/bic.py::BiC.train_data::tensor": "the held-out part's task index: host bookkeeping",
    "methods/bic.py::BiC.train_data::randperm": "the run's CPU generator; positions into the host-side memory and split",
    "methods/bic.py::BiC.held_out_data::full": "task ids, moved to the device by the trainer like task_split's",
    "methods/bic.py::rows_besides::ones": "a mask over host-side positions",
    "methods/gdumb.py::GDumb.offer::arange": "memory slots, the host-side bookkeeping of its fill",
    "methods/gdumb.py::GDumb.fit_loss::rand": "the run's CPU generator: CutMix's coin, read on the host",
    "methods/gdumb.py::GDumb.fit_loss::randint": "the run's CPU generator: a seed for CutMix's box, read on the host",
    "methods/gdumb.py::GDumb.fit_loss::randperm": "the run's CPU generator; moved to the batch's device in the "
                                                  "expression",
    "methods/xder.py::XDER.__init__::zeros": "each slot's draw count: host bookkeeping (update_drawn reads it there)",
    "methods/xder.py::XDER.after_task::zeros": "likewise, reset",
    "methods/xder.py::XDER.load_state_dict::zeros": "likewise, its default",
    "methods/xder.py::XDER.update_drawn::rand": "the run's CPU generator, compared with the host-side draw counts",
    "methods/xder.py::XDER.loss_terms::zeros": "no drawn slot: the drawn slots are host-side positions",
    "methods/xder.py::XDER.add_task::full": "per-class quotas of the buffer: host bookkeeping",
    "methods/xder.py::XDER.add_task::randperm": "the run's CPU generator; positions gathered by the split on its device",
    "methods/xder.py::first_occurrences::arange": "positions among the host-side drawn slots",
    "methods/xder.py::first_occurrences::full": "likewise",
    "methods/xder.py::own_head::arange": "each unit's task, from the scenario's host-side class counts; moved to the "
                                         "task ids' device",
    "methods/xder.py::own_head::tensor": "likewise",
    "core/scenario.py::Scenario.__init__::tensor": "host tables, copied once to each device they meet (_on)",
    "engine/trainer.py::index_batches::randperm": "the sampler's CPU generator: the same batches on every device",
    "core/fewer_ops.py::plus_constant::tensor": "a penalty over no parameter: a 0-dim CPU tensor, which torch "
                                                   "lets meet tensors of any device",
}


def tensors(state: object, path: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in `state` (nested dicts, lists and tuples) with its dotted path."""
    if isinstance(state, torch.Tensor):
        return [(path, state)]
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [found for key, value in items for found in tensors(value, f"{path}.{key}" if path else str(key))]


def matches(path: str, pattern: str) -> bool:
    """Whether dotted `path` matches dotted `pattern`, key by key (a * stands for one key)."""
    keys, wanted = path.split("."), pattern.split(".")
    return len(keys) == len(wanted) and all(fnmatch.fnmatchcase(key, want) for key, want in zip(keys, wanted))


def misplaced(state: dict, device: torch.device, host_side: list[str]) -> list[str]:
    """The paths (with their device) of the tensors of `state` on another device than `device`, but for those whose
    path matches a pattern of `host_side`."""
    return [f"{path} ({tensor.device})" for path, tensor in tensors(state)
            if tensor.device.type != device.type and not any(matches(path, pattern) for pattern in host_side)]


def declared_host_state(overrides: list[str]) -> list[str]:
    """The run's methods' `host_state` keys as paths of its state: method.<key>, or method.<part>.<key> for a
    combination (its state holds each part's under the part's name)."""
    cfg = compose_config(TINY, *overrides)
    nodes = {"method": cfg.method, **{f"plus.{name}": node for name, node in (cfg.get("plus") or {}).items()}}
    combined = len(nodes) > 1
    return [f"method.{part}.{key}" if combined else f"method.{key}"
            for part, node in nodes.items() for key in get_class(node._target_).host_state]


def test_the_tests_over_every_method_name_every_method():
    assert sorted(name for name in EVERY_METHOD if name not in COMBINATIONS) == method_names()


def test_the_walk_finds_a_tensor_on_another_device_wherever_it_is_nested():
    state = {"model": {"w": torch.zeros(2)}, "method": {"buffer": {"x": torch.zeros(2, device="meta")},
                                                         "terms": [{"fisher": {"w": torch.zeros(1, device="meta")}}]},
             "rng": torch.zeros(3, dtype=torch.uint8), "optimizer": {"state": {0: {"step": torch.zeros(())}}}}
    assert misplaced(state, torch.device("meta"), list(HOST_SIDE)) == ["model.w (cpu)"]
    assert misplaced(state, torch.device("cpu"), list(HOST_SIDE)) == [
        "method.buffer.x (meta)", "method.terms.0.fisher.w (meta)"]
    assert misplaced(state, torch.device("cpu"), [*HOST_SIDE, "method.buffer.x", "method.terms.*"]) == [
        "method.terms.0.fisher.w (meta)"]  # a pattern's * matches one key, not a path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", list(EVERY_METHOD))
def test_every_tensor_of_a_runs_state_is_on_its_device_or_declared_host_side(tmp_path, method, device):
    """Every checkpoint (one every 5 steps, so inside tasks and inside E2E's balanced fine-tuning) and the task-A
    cache entry, loaded with each tensor on the device it was saved from."""
    overrides = [*EVERY_METHOD[method], "checkpoint.every=5", "checkpoint.keep=1000"]
    summary, run_dir = tiny_run(tmp_path, *on(device), *overrides)
    assert summary["status"] == "ok", summary.get("error")
    declared = declared_host_state(overrides)
    host_side = [*HOST_SIDE, *declared]
    checkpoints = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
    assert len(checkpoints) >= 12  # 60 steps, more with a stage (E2E)
    states = [*checkpoints, *(tmp_path / "outputs" / "cache").glob("first_task/*.pt")]
    seen = set()
    for path in states:
        state = load_checkpoint(path, device=None)
        assert misplaced(state, torch.device(device), host_side) == [], path.name
        seen.update(found for found, _ in tensors(state))
    for pattern in declared:  # a declaration names state the method holds (at some point of the run)
        assert any(matches(path, pattern) for path in seen), pattern


def factory_calls(source: Path, root: Path = ROOT) -> set[str]:
    """The calls of torch's tensor factories without a `device` keyword (or **kwargs) in `source`, as
    "<file under root>::<function>::<name>" (the enclosing function's qualified name, <module> at the top level)."""
    where = source.relative_to(root).as_posix()
    found = set()

    def visit(node: ast.AST, scope: list[str]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scope = [*scope, node.name]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and not any(keyword.arg in ("device", None) for keyword in node.keywords)):
            found.add(f"{where}::{'.'.join(scope) or '<module>'}::{node.func.attr}")
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(ast.parse(source.read_text()), [])
    return found


def test_no_tensor_factory_in_methods_or_engine_is_called_without_a_device_unless_listed():
    found = set().union(*(factory_calls(path) for folder in AUDITED for path in sorted((ROOT / folder).rglob("*.py"))))
    unlisted, stale = sorted(found - set(HOST_FACTORIES)), sorted(set(HOST_FACTORIES) - found)
    assert not unlisted, f"give these a device=, or list them in HOST_FACTORIES with the reason: {unlisted}"
    assert not stale, f"HOST_FACTORIES lists calls that no longer exist: {stale}"


def test_the_factory_check_sees_a_call_without_a_device(tmp_path):
    (tmp_path / "methods").mkdir()
    source = tmp_path / "methods" / "m.py"
    source.write_text("import torch\n\nclass M:\n    def step(self, x):\n"
                      "        a = torch.zeros(3, device=x.device)\n        b = torch.arange(len(x))\n"
                      "        return torch.ones(2, **{'device': x.device}), torch.zeros_like(x)\n")
    assert factory_calls(source, tmp_path) == {"methods/m.py::M.step::arange"}
