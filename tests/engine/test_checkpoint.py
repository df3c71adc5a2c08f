"""Checkpoints and task-A cache entries prove their integrity: a checksum written last, verified
before loading; a bad checkpoint is set aside for the one before it; a kill at any point resumes exactly."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cl_bench.core.files import write_json
from cl_bench.core.state_format import STATE_FORMAT, IncompatibleState
from cl_bench.engine.run import load_initial_weights
from cl_bench.records.checkpoint import TRAILER_SIZE, CorruptState, load_checkpoint, save_checkpoint
from cl_bench.records.figure_worker import CurveFigure
from tests.helpers.config import TINY
from tests.helpers.runs import COMPARED, tiny_run

TENSOR = torch.arange(4096, dtype=torch.float32)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    path = tmp_path / "ckpt-000000010-000.pt"
    save_checkpoint({"format": STATE_FORMAT, "model": {"weight": TENSOR.clone()}}, path)
    return path


def flip_a_bit_inside_the_tensor(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(TENSOR[1000:1010].numpy().tobytes())  # torch stores a tensor's bytes as they are
    assert at > 0
    data[at + 3] ^= 0x40
    path.write_bytes(data)


def test_a_checkpoint_with_flipped_bytes_inside_a_tensor_is_refused(checkpoint):
    flip_a_bit_inside_the_tensor(checkpoint)
    with pytest.raises(CorruptState, match="hash mismatch") as error:
        load_checkpoint(checkpoint)
    assert str(checkpoint) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("cut", ["half", "inside the checksum", "the whole checksum"])
def test_a_truncated_checkpoint_is_refused(checkpoint, cut):
    data = checkpoint.read_bytes()
    end = {"half": len(data) // 2, "inside the checksum": len(data) - 10, "the whole checksum": -TRAILER_SIZE}
    checkpoint.write_bytes(data[: end[cut]])
    with pytest.raises(CorruptState, match="truncated") as error:
        load_checkpoint(checkpoint)
    assert str(checkpoint) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("written_by", ["0.2", None])
def test_a_checkpoint_of_an_earlier_cl_bench_is_refused_as_such(tmp_path, written_by):
    path = tmp_path / "ckpt-000000010-000.pt"
    state = {"model": {"weight": TENSOR}} | ({"format": written_by} if written_by else {})
    torch.save(state, path)  # as cl_bench 0.2 and earlier wrote checkpoints: no checksum
    with pytest.raises(IncompatibleState) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "written by an earlier cl_bench" in message and "start a new run folder" in message
    assert f"cl_bench {written_by or '0.1 or older'}" in message and "corrupt" not in message


def test_init_from_takes_a_plain_state_dict_and_verifies_a_checkpoint(tmp_path, checkpoint):
    plain = tmp_path / "plain.pt"
    torch.save({"weight": TENSOR}, plain)  # a user's own file: no checksum to verify
    model = torch.nn.ParameterDict({"weight": torch.nn.Parameter(torch.zeros(4096))})
    load_initial_weights(model, str(plain))
    assert torch.equal(model["weight"].detach(), TENSOR)
    load_initial_weights(model, str(checkpoint))
    flip_a_bit_inside_the_tensor(checkpoint)
    with pytest.raises(CorruptState, match="hash mismatch"):
        load_initial_weights(model, str(checkpoint))


def test_state_files_get_the_permissions_of_the_umask(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    save_checkpoint({"x": 1}, tmp_path / "a.pt")
    write_json({"x": 1}, tmp_path / "a.json")
    for name in ("a.pt", "a.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def run_in(tmp_path: Path, name: str, *overrides: str) -> dict:
    """A tiny run into tmp_path/name, its figure drawn in this process (no helper process to start per run)."""
    return tiny_run(tmp_path, *overrides, name=name, figure=CurveFigure(use_helper=False))[0]


def results(summary: dict, run_dir: Path) -> tuple:
    return (*(json.dumps(summary[key]) for key in COMPARED), (run_dir / "metrics.jsonl").read_text())


RESUMABLE = ["first_task.cache=false", "checkpoint.every=10", "checkpoint.keep=3"]


def test_a_run_whose_latest_checkpoint_is_truncated_resumes_from_the_one_before(tmp_path, caplog):
    run_dir = tmp_path / "run"
    whole = run_in(tmp_path, "run", *RESUMABLE)
    expected = results(whole, run_dir)
    latest = run_dir / "checkpoints" / "ckpt-000000060-002.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="cl_bench.records.checkpoint"):
        resumed = run_in(tmp_path, "run", *RESUMABLE)
    assert resumed["status"] == "ok", resumed.get("error")
    assert resumed["resumed_from"] == str(run_dir / "checkpoints" / "ckpt-000000050-001.pt")
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "cl_bench.records.checkpoint"]
    assert str(latest) in warning and "truncated" in warning
    assert (latest.parent / f"{latest.name}.corrupt").exists()  # kept for inspection, never picked again
    assert results(resumed, run_dir) == expected


def test_a_run_folder_without_a_good_checkpoint_is_never_trained_over(tmp_path):
    run_dir = tmp_path / "run"
    run_in(tmp_path, "run", *RESUMABLE)
    for path in (run_dir / "checkpoints").glob("ckpt-*.pt"):
        path.write_bytes(path.read_bytes()[:-1])
    for attempt in range(2):  # and not on the next attempt either, when all are set aside
        summary = run_in(tmp_path, "run", *RESUMABLE)
        assert summary["status"] == "failed" and summary["error"].startswith("CorruptState"), attempt
        assert "start a new run folder (hydra.run.dir=" in summary["error"]
    assert len(list((run_dir / "checkpoints").glob("ckpt-*.pt.corrupt"))) == 3


def test_a_truncated_task_a_cache_entry_is_retrained(tmp_path, caplog):
    good = run_in(tmp_path, "good")
    (entry,) = (tmp_path / "outputs" / "cache" / "first_task").glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="cl_bench.engine.first_task_cache"):
        retrained = run_in(tmp_path, "retrained")
    assert retrained["status"] == "ok", retrained.get("error")
    assert not retrained["first_task_cached"]
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "cl_bench.engine.first_task_cache"]
    assert str(entry) in warning and "retraining task A" in warning
    reused = run_in(tmp_path, "reused")  # the entry was replaced by a good one
    assert reused["first_task_cached"]
    for run_dir, summary in ((tmp_path / "retrained", retrained), (tmp_path / "reused", reused)):
        assert results(summary, run_dir) == results(good, tmp_path / "good")


# One process per kill point, forked after the imports (a run's own import time is most of its cost).
KILLER = """
import io, json, os, signal, sys
from pathlib import Path

import sklearn.datasets  # noqa: F401 (what the digits are read with: imported once, before forking)

import cl_bench.records.checkpoint
from cl_bench.records.figure_worker import CurveFigure
from cl_bench.engine.run import run_experiment
from cl_bench.engine.step import Step

sys.path.insert(0, os.getcwd())  # the repository (the killer's working directory)
from tests.helpers.config import compose_config  # noqa: E402


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_step(step):
    take_step, taken = Step.__call__, []

    def in_step(self, *args):
        taken.append(1)
        if len(taken) == step:  # in global step `step` of a run from its start, before its optimiser step
            die()
        return take_step(self, *args)

    Step.__call__ = in_step


def kill_in_write(step):
    atomic_write = cl_bench.records.checkpoint.write_atomically

    def half_written(path, write):
        if not path.name.startswith(f"ckpt-{step:09d}-"):
            return atomic_write(path, write)

        def write_half(file):
            buffer = io.BytesIO()
            write(buffer)
            file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            file.flush()
            die()

        atomic_write(path, write_half)

    cl_bench.records.checkpoint.write_atomically = half_written


overrides, kills = json.loads(sys.argv[1]), json.loads(sys.argv[2])
cfg = compose_config(*overrides)
for kind, step, run_dir in kills:
    pid = os.fork()
    if pid == 0:
        {"step": kill_in_step, "write": kill_in_write}[kind](step)
        Path(run_dir).mkdir()
        run_experiment(cfg, Path(run_dir), CurveFigure(use_helper=False))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(json.dumps([kind, step, os.WIFSIGNALED(status) and os.WTERMSIG(status)]), flush=True)
"""

KILLED = ["first_task.cache=false", "checkpoint.every=5"]  # 60 global steps, a checkpoint every 5


def kill_points(rng: random.Random) -> list[tuple[str, int]]:
    """10 global steps: 2 killed half way through writing their checkpoint, 8 in the step itself."""
    writes = rng.sample(range(5, 61, 5), 2)
    steps = rng.sample([s for s in range(1, 61) if s not in writes], 8)
    return [("write", s) for s in writes] + [("step", s) for s in steps]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the killer forks a process per kill point")
def test_killed_at_any_point_and_resumed_equals_uninterrupted(tmp_path):
    points = kill_points(random.Random(0))
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    overrides = [f"output_root={tmp_path / 'outputs'}", f"data_dir={tmp_path / 'data'}", TINY, *KILLED]
    kills = [(kind, step, str(tmp_path / f"{kind}-{step}")) for kind, step in points]
    killer = subprocess.run(
        [sys.executable, str(script), json.dumps(overrides), json.dumps(kills)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
    )
    assert killer.returncode == 0, killer.stderr[-3000:]
    outcomes = [json.loads(line) for line in killer.stdout.splitlines()]
    assert outcomes == [[kind, step, signal.SIGKILL] for kind, step in points], killer.stderr[-3000:]
    whole = run_in(tmp_path, "whole", *KILLED)
    expected = results(whole, tmp_path / "whole")
    for kind, step, run_dir in kills:
        resumed = run_in(tmp_path, Path(run_dir).name, *KILLED)
        assert resumed["status"] == "ok", (kind, step, resumed.get("error"))
        assert results(resumed, Path(run_dir)) == expected, (kind, step)
        assert not list((Path(run_dir) / "checkpoints").glob(".ckpt-*")), (kind, step)  # partial writes removed
