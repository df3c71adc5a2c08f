"""The whole run's state as one dict of tensors and plain values (a checkpoint, a task-A cache entry),
and back: loop position, model, method, random streams, the sampler's position in the task being
trained, results, evaluator and optimiser."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from cl_bench.engine.optim import steps_on_host
from cl_bench.engine.sequence_result import SequenceResult
from cl_bench.models.head import grow_head

if TYPE_CHECKING:
    from cl_bench.engine.trainer import TaskRun, Trainer


class IncompatibleState(ValueError):
    """A checkpoint written by a cl_bench whose settings meant something else."""


# Checkpoints (and task-A cache entries) are read only by a cl_bench that writes this format: 0.2
# carries the optimiser across tasks by default and renamed EWC's modes; 0.3 files carry a SHA-256. A state
# saved inside a method's stage (Method.stages) holds the task's `stage` too; one without it is in the main steps.
STATE_FORMAT = "0.3"


def capture(trainer: Trainer) -> dict:
    """Everything needed to continue `trainer`'s sequence exactly."""
    return {
        "format": STATE_FORMAT,
        "next_task": trainer.next_task,
        "global_step": trainer.global_step,
        "rows_logged": trainer.rows_logged,
        "model": trainer.model.state_dict(),
        "method": trainer.method.state_dict(),
        "rng": torch.get_rng_state(),
        "sampler_rng": trainer.sampler_generator.get_state(),
        "method_rng": trainer.method_generator.get_state(),
        # the CUDA generator's (dropout on the GPU draws from it), on CUDA only
        **({"cuda_rng": torch.cuda.get_rng_state(trainer.device)} if trainer.device.type == "cuda" else {}),
        "result": asdict(trainer.result),
        **trainer.evaluator.state_dict(),
        "optimizer": None if trainer.optimizer is None else trainer.optimizer.state_dict(),
        "task": None if trainer.current is None else _task_state(trainer.current),
    }


def _task_state(run: TaskRun) -> dict:
    """Where the task being trained is: its step, loss sums since the last evaluation, and the
    sampler state its batches were drawn from; inside a method's stage (Method.stages) also the stage
    and the sampler state of its batches (a task without stages is saved as before stages existed)."""
    state = {
        "task_idx": run.task_idx,
        "step": run.step,
        "since": run.since,
        "sums": run.sums,
        "nonfinite": run.nonfinite,
        "sampler_state": run.sampler_state,
    }
    if run.stage > 0:
        state.update(stage=run.stage, stage_sampler_state=run.stage_sampler_state)
    return state


def restore(trainer: Trainer, state: dict) -> None:
    """Continue `trainer` from `state`: the model's head is grown to the size the state holds."""
    if state.get("format") != STATE_FORMAT:
        raise IncompatibleState(
            f"this state was written by cl_bench {state.get('format', '0.1 or older')}, whose settings meant "
            f"something else (before 0.2 each task started a fresh optimiser and EWC's mode=online was today's "
            f"mode=sum); cl_bench {STATE_FORMAT} does not continue it: start a new run folder"
        )
    trainer.next_task = state["next_task"]
    trainer.global_step = state["global_step"]
    trainer.rows_logged = state["rows_logged"]
    grow_head(trainer.model, state["model"]["head.weight"].shape[0])
    trainer.model.load_state_dict(state["model"])
    trainer.method.load_state_dict(state["method"])
    trainer.result = SequenceResult(**state["result"])
    trainer.evaluator.load_state_dict(state)
    trainer.optimizer = None
    if state["optimizer"] is not None:
        trainer.optimizer = trainer.settings.optimizer.new(trainer.model.parameters(), trainer.settings.lr)
        trainer.optimizer.load_state_dict(steps_on_host(state["optimizer"]))
    task = state["task"]
    if task is not None:
        run = trainer.draw_task(task["task_idx"], task["sampler_state"].cpu())
        if task.get("stage", 0) > 0:  # inside a stage: the method returns its stages again (Method.stages)
            run.stages = trainer.method_stages(trainer.context(run.task_idx))
            trainer.begin_stage(run, task["stage"], task["stage_sampler_state"].cpu())
        run.step, run.since, run.sums = task["step"], task["since"], task["sums"]
        run.nonfinite = task["nonfinite"].to(trainer.device)
        trainer.current = run
    # The random streams are the CPU's (the same draws on every device): their states go back to the host from
    # wherever the state was loaded (a checkpoint is loaded onto the run's device).
    trainer.method_generator.set_state(state["method_rng"].cpu())  # after the hooks above, which may draw from it
    trainer.sampler_generator.set_state(state["sampler_rng"].cpu())
    torch.set_rng_state(state["rng"].cpu())
    if "cuda_rng" in state and trainer.device.type == "cuda":  # a state saved on the GPU, continued on one
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), trainer.device)
