"""Every code path that deletes or overwrites, driven with a folder of the user's that holds a file of the
user's: the file stays as it was (issue 24, finding 1 and its Build line "Nothing is deleted ...").

A folder given to cl_bench is new, empty, or one cl_bench made; anything else is refused before anything is
written there, and `resume=` works in the run's own folder without making (or removing) another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cl_bench.core.not_run import record_not_run
from cl_bench.engine.run import run_experiment
from cl_bench.report.make import write_report
from tests.helpers.cli import cl_bench
from tests.helpers.config import TINY

SMALL = ["first_task.steps=20", "steps=20"]
MINE = "the user's own words\n"


def users_folder(path: Path) -> Path:
    """A folder of the user's holding one file of theirs, `mine.txt`."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "mine.txt").write_text(MINE)
    return path


def listing(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path → its bytes' repr), to compare before and after."""
    return {str(p.relative_to(folder)): repr(p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_untouched(folder: Path, before: dict[str, str]) -> None:
    assert (folder / "mine.txt").read_text() == MINE
    assert listing(folder) == before


@pytest.fixture
def finished_run(tmp_path) -> Path:
    """A finished tiny run, made by the command line, its folder given."""
    run_dir = tmp_path / "run"
    done = cl_bench(tmp_path, *SMALL, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    return run_dir


def test_resume_beside_a_run_dir_of_the_users_is_refused_and_touches_neither(tmp_path, finished_run):
    """`resume=<run> hydra.run.dir=<any existing folder>` deleted that folder."""
    precious = users_folder(tmp_path / "precious")
    before, run_before = listing(precious), listing(finished_run)
    done = cl_bench(tmp_path, f"resume={finished_run}", f"hydra.run.dir={precious}")
    assert done.returncode != 0 and "leave hydra.run.dir out" in done.stderr
    assert_untouched(precious, before)
    assert listing(finished_run) == run_before


def test_a_refused_resume_touches_no_folder_and_makes_none(tmp_path):
    """`resume=/no/such/run hydra.run.dir=precious` said "run refused", and precious/ was gone."""
    precious = users_folder(tmp_path / "precious")
    before = listing(precious)
    missing = tmp_path / "no" / "such" / "run"
    done = cl_bench(tmp_path, f"resume={missing}", f"hydra.run.dir={precious}")
    assert done.returncode != 0 and "not a cl_bench run folder" in done.stderr
    assert_untouched(precious, before)
    assert not (tmp_path / "no").exists()


def test_resume_into_its_own_folder_keeps_the_run(tmp_path, finished_run):
    """`resume=r2 hydra.run.dir=r2` removed the run's checkpoints, metrics and summary, and exited 0."""
    (finished_run / "mine.txt").write_text(MINE)  # a note the user keeps beside the run's files
    metrics = (finished_run / "metrics.jsonl").read_text()
    summary = json.loads((finished_run / "summary.json").read_text())
    command = [sys.executable, "-m", "cl_bench.cli.app", "resume=run", "hydra.run.dir=run"]  # as typed: relative
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert (finished_run / "mine.txt").read_text() == MINE
    assert (finished_run / "metrics.jsonl").read_text() == metrics
    assert json.loads((finished_run / "summary.json").read_text())["score"] == summary["score"]
    assert list((finished_run / "checkpoints").glob("ckpt-*.pt"))
    assert not (tmp_path / "out" / "runs").exists()  # no folder of its own was made, and none removed


def test_resume_makes_no_other_folder_and_keeps_the_runs_record(tmp_path, finished_run):
    hydra_config = (finished_run / ".hydra" / "config.yaml").read_text()
    done = cl_bench(tmp_path, f"resume={finished_run}")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "out" / "runs").exists()
    assert (finished_run / ".hydra" / "config.yaml").read_text() == hydra_config  # the run's own, put back


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_a_users_folder_given_as_the_run_or_sweep_folder_is_refused(tmp_path, key):
    precious = users_folder(tmp_path / "precious")
    before = listing(precious)
    done = cl_bench(tmp_path, *SMALL, f"{key}={precious}", multirun=key == "hydra.sweep.dir")
    assert done.returncode != 0
    assert f"{key}={precious.resolve()} holds files that no cl_bench run made (mine.txt)" in done.stderr
    assert "Traceback" not in done.stderr
    assert_untouched(precious, before)


def test_the_working_directory_as_the_run_folder_is_refused(tmp_path):
    """`hydra.run.dir=.` would have deleted the working directory."""
    precious = users_folder(tmp_path / "precious")
    before = listing(precious)
    command = [sys.executable, "-m", "cl_bench.cli.app", TINY, "hydra.run.dir=."]
    done = subprocess.run(command, cwd=precious, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0 and "holds files that no cl_bench run made" in done.stderr
    assert_untouched(precious, before)


def test_a_users_folder_among_the_jobs_of_an_existing_sweep_is_refused_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    first = cl_bench(tmp_path, *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}", multirun=True)
    assert first.returncode == 0, first.stderr
    job_before = listing(sweep / "0")
    precious = users_folder(sweep / "2")
    before = listing(precious)
    done = cl_bench(tmp_path, *SMALL, "seed=0,1,2", f"hydra.sweep.dir={sweep}", multirun=True)
    assert done.returncode != 0 and "no job was started" in done.stderr and "job 2 (" in done.stderr
    assert "holds files that no cl_bench run made (mine.txt)" in done.stderr
    assert_untouched(precious, before)
    assert listing(sweep / "0") == job_before


def test_a_symbolic_link_in_a_run_folder_is_never_written_through(tmp_path, finished_run):
    """A shared run folder whose record links elsewhere: Hydra, the lock and the metrics would write there."""
    precious = users_folder(tmp_path / "precious")
    before = listing(precious)
    (finished_run / "metrics.jsonl").unlink()
    os.symlink(precious / "mine.txt", finished_run / "metrics.jsonl")
    done = cl_bench(tmp_path, f"resume={finished_run}")
    assert done.returncode != 0 and "metrics.jsonl is a symbolic link" in done.stderr
    assert_untouched(precious, before)


def test_multirun_resume_is_refused(tmp_path, finished_run):
    done = cl_bench(tmp_path, f"resume={finished_run}", multirun=True)
    assert done.returncode != 0 and "resume= continues one run" in done.stderr


def test_a_run_in_process_refuses_a_users_folder(make_config, tmp_path):
    precious = users_folder(tmp_path / "precious")
    before = listing(precious)
    summary = run_experiment(make_config(TINY), precious)
    assert summary["status"] == "refused" and "holds files that no cl_bench run made" in summary["error"]
    assert_untouched(precious, before)


def test_caches_and_outputs_in_a_users_folder_leave_its_file(make_config, tmp_path):
    precious = users_folder(tmp_path / "precious")
    summary = run_experiment(make_config(TINY, f"cache_dir={precious}", f"output_root={precious}"), tmp_path / "run")
    assert summary["status"] == "ok", summary.get("error")
    assert (precious / "mine.txt").read_text() == MINE


def test_the_report_never_overwrites_a_file_it_did_not_write(make_config, tmp_path):
    assert run_experiment(make_config(TINY), tmp_path / "run")["status"] == "ok"
    precious = users_folder(tmp_path / "precious")
    (precious / "report.md").write_text(MINE)
    before = listing(precious)
    with pytest.raises(ValueError, match="report.md is not a file cl-bench-report wrote"):
        write_report([tmp_path / "run"], precious)
    assert_untouched(precious, before)
    (precious / "report.md").unlink()
    write_report([tmp_path / "run"], precious)  # beside a file of the user's, and over its own files again
    write_report([tmp_path / "run"], precious)
    assert (precious / "mine.txt").read_text() == MINE and (precious / "report.md").read_text().startswith("| ")


def test_a_stopped_sweep_records_not_run_only_where_no_run_is(tmp_path, finished_run):
    """Ctrl-C on a sweep re-run into its own folder: a later job's folder holds a finished run of the
    first start, which keeps its summary."""
    summary = (finished_run / "summary.json").read_text()
    assert not record_not_run(finished_run, "the sweep was stopped")
    assert (finished_run / "summary.json").read_text() == summary
    assert record_not_run(tmp_path / "new", "the sweep was stopped")
    assert json.loads((tmp_path / "new" / "summary.json").read_text())["status"] == "not_run"


def test_a_refused_resume_puts_the_runs_own_hydra_record_back(tmp_path, finished_run):
    """Hydra writes its record of the start into the resumed run's folder before cl_bench's checks run."""
    hydra_config = (finished_run / ".hydra" / "config.yaml").read_text()
    done = cl_bench(tmp_path, f"resume={finished_run}", "steps=50000")
    assert done.returncode != 0 and "would change the experiment" in done.stderr
    assert (finished_run / ".hydra" / "config.yaml").read_text() == hydra_config
