"""No host synchronisation in a training step, for every method: a step's work stays on the device, and the host
reads a device value only at the boundaries (evaluation, checkpoint, a task's start and end).

Without relying on the trainer's internals: two runs whose only difference is their number of steps, every boundary
the same (`eval_every` beyond the budgets: evaluations at the tasks' starts and ends only), must read values on the
host equally often. What is counted:

- everywhere: every Python call of `.item()`, `.cpu()`, `.tolist()`, `.numpy()`, `float(t)`, `int(t)`, `bool(t)` or
  `t.__index__()` on a tensor, made by code outside torch (torch's own host-side reads, such as Adam's of its step
  counts kept on the host, are torch's) and outside cl_bench/data (whose index batches are on the host by contract:
  the trainer draws them there);
- on CUDA also every synchronising operation torch reports (`torch.cuda.set_sync_debug_mode("warn")`): a copy
  from the device, a blocking copy to it, `nonzero`, ..., whoever makes it.

Every method's steps are counted with the task-A cache off; then a task's steps after task A was loaded from the
cache (a state loaded onto the device, as a resumed run's checkpoint is), whose optimiser state Adam reads at every
step (engine/optim.py: `steps_on_host`)."""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import cl_bench
from tests.helpers.devices import DEVICES, on
from tests.helpers.methods import EVERY_METHOD
from tests.helpers.runs import tiny_run

HOST_READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")
HOST_SIDE = (Path(torch.__file__).parent, Path(cl_bench.__file__).parent / "data")
SYNC_WARNING = "called a synchronizing CUDA operation"
STEPS = 6  # a task's steps in the shorter run; the longer one takes twice as many
BOUNDARIES_ONLY = ["eval_every=1000", "checkpoint.every=null"]
# The methods whose algorithm reads the device at every step, by design, each in its own file only: a GPU step of
# theirs waits for the host there (docs/gpu.md says which).
STEP_READS_BY_DESIGN = {
    "gem": ("methods/gem.py", "the quadratic program is solved on the host by quadprog (GEM's and Mammoth's code "
                              "likewise), after a conflict check read there"),
    "xder": ("methods/xder.py", "which drawn slots' stored logits are updated is chosen on the host from their draw "
                                "counts (a selection of data-dependent size, as Mammoth's boolean indexing)"),
}
# The best state's test evaluation (engine/evaluator.py) is made at the run's end, or taken from the evaluation
# cache when the best state is the last one: a boundary whose reads depend on where the peak fell, not on the steps.
RESULT_DEPENDENT = ("best_test",)


def counted(filename: str) -> bool:
    """Whether a host read made from `filename` counts (not torch's own, not the host-side loader's)."""
    return not any(Path(filename).is_relative_to(folder) for folder in HOST_SIDE)


def within(frame, functions: tuple[str, ...]) -> bool:
    """Whether `frame` runs inside a call of one of cl_bench's `functions`."""
    while frame is not None:
        if frame.f_code.co_name in functions and counted(frame.f_code.co_filename):
            return True
        frame = frame.f_back
    return False


@contextmanager
def host_reads(device: str) -> Iterator[Counter]:
    """Counts, by where they are made from, the host reads of tensors (patched onto torch.Tensor for the block) and,
    on CUDA, the synchronising operations torch reports."""
    counts: Counter = Counter()
    own = {name: name in vars(torch.Tensor) for name in HOST_READS}
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(name: str, original):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            if counted(caller.f_code.co_filename) and not within(caller, RESULT_DEPENDENT):
                counts[f"{name} at {caller.f_code.co_filename}:{caller.f_lineno}"] += 1
            return original(self, *args, **kwargs)

        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(name, original))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                yield counts
            finally:
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        for warning in caught:
            if SYNC_WARNING in str(warning.message):
                counts[f"CUDA synchronisation at {warning.filename}:{warning.lineno}"] += 1
    finally:
        for name, original in originals.items():
            if own[name]:
                setattr(torch.Tensor, name, original)
            else:
                delattr(torch.Tensor, name)


def counted_run(tmp_path: Path, name: str, device: str, *overrides: str) -> Counter:
    """The host reads of a tiny run (which must end ok) on `device`."""
    with host_reads(device) as counts:
        summary, _ = tiny_run(tmp_path, *on(device), *BOUNDARIES_ONLY, *overrides, name=name)
    assert summary["status"] == "ok", summary.get("error")
    return counts


def per_step_reads(shorter: Counter, longer: Counter) -> dict[str, int]:
    """Where the longer run read more often than the shorter: the reads its extra steps made."""
    return {where: longer[where] - shorter[where] for where in longer if longer[where] != shorter[where]}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", list(EVERY_METHOD))
def test_a_training_step_reads_nothing_on_the_host(tmp_path, method, device):
    common = [*EVERY_METHOD[method], "first_task.cache=false"]
    if device == "cuda":  # CUDA's one-time set-up in this process (cuBLAS, ...) would count against the first run
        counted_run(tmp_path, "set_up", device, *common, f"first_task.steps={STEPS}", f"steps={STEPS}")
    shorter = counted_run(tmp_path, "shorter", device, *common, f"first_task.steps={STEPS}", f"steps={STEPS}")
    longer = counted_run(tmp_path, "longer", device, *common, f"first_task.steps={2 * STEPS}", f"steps={2 * STEPS}")
    assert sum(shorter.values()) > 0  # the boundaries' reads are seen: the counting works
    extra = per_step_reads(shorter, longer)
    if method in STEP_READS_BY_DESIGN:
        own_file = str(Path(cl_bench.__file__).parent / STEP_READS_BY_DESIGN[method][0])
        assert extra and all(where.split(" at ")[1].startswith(own_file + ":") for where in extra), extra
    else:
        assert extra == {}


@pytest.mark.parametrize("device", DEVICES)
def test_after_task_a_is_loaded_from_the_cache_a_step_reads_nothing(tmp_path, device):
    """A state loaded onto the device (the task-A cache; a resumed run's checkpoint likewise) and the optimiser
    carried from it (optimizer_state=carry)."""
    common = ["method=baseline", "optimizer_state=carry", f"first_task.steps={STEPS}"]
    counted_run(tmp_path, "first", device, *common, f"steps={STEPS}")  # trains task A, into the cache
    shorter = counted_run(tmp_path, "shorter", device, *common, f"steps={STEPS}")
    longer = counted_run(tmp_path, "longer", device, *common, f"steps={2 * STEPS}")
    assert per_step_reads(shorter, longer) == {}


def test_a_method_that_reads_a_loss_at_every_step_is_caught(tmp_path):
    """The check itself: a loss read with float() at every step of a method shows as one read per extra step."""
    plugin = ["method._target_=tests.helpers.HostReadInStep", "first_task.cache=false"]
    shorter = counted_run(tmp_path, "shorter", "cpu", *plugin, f"first_task.steps={STEPS}", f"steps={STEPS}")
    longer = counted_run(tmp_path, "longer", "cpu", *plugin, f"first_task.steps={STEPS}", f"steps={2 * STEPS}")
    (where, extra), = per_step_reads(shorter, longer).items()
    assert where.startswith("__float__ at ") and where.split(" at ")[1].startswith(str(Path(__file__).parents[1]))
    assert extra == STEPS
