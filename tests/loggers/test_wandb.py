"""`logger=wandb` for real, offline: what W&B's own files hold, read back with W&B's own reader."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wandb
from omegaconf import OmegaConf

from cl_bench.engine.run import run_experiment
from cl_bench.loggers import wandb as wandb_logger
from cl_bench.loggers.base import RunLogger
from cl_bench.loggers.wandb import WandbLogger
from tests.helpers.cli import cl_bench
from tests.helpers.config import TINY


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch):
    """W&B offline, its settings and caches in tmp_path (inherited by the CLI's subprocess); W&B's
    process-wide state reset after the test (a test that runs W&B in this process reads its own env)."""
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        folder = tmp_path / name.lower()
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no.netrc"))
    yield
    wandb.teardown()


def read_records(run_folder: Path) -> dict[str, list[dict]]:
    """A W&B run's records by type (run, history, metric, summary, exit, ...), as W&B's own reader of
    .wandb files (`wandb leet inspect --json`) prints them."""
    done = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_folder)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, list[dict]] = {}
    for line in filter(str.strip, done.stdout.splitlines()):
        record = json.loads(line)
        found.setdefault(record["type"], []).append(record[record["type"]])
    return found


def final_summary(found: dict[str, list[dict]]) -> dict:
    """The run summary: its updates merged in order (a logged image's keys come flattened, e.g. curves.path)."""
    summary: dict = {}
    for record in found["summary"]:
        summary.update(record.get("update", {}))
    return summary


def offline_runs(folder: Path) -> list[Path]:
    return sorted((folder / "wandb").glob("offline-run-*"))


def test_each_job_is_a_finished_offline_run_holding_rows_summary_and_figure(tmp_path):
    done = cl_bench(tmp_path, "logger=wandb", "logger.tags=[test]", "lr=0.001,0.0001", multirun=True)
    assert done.returncode == 0, done.stderr
    sweep = next((tmp_path / "out" / "multirun").glob("*/*"))
    jobs = sorted(p for p in sweep.iterdir() if (p / "summary.json").exists())
    assert len(jobs) == 2
    for job in jobs:
        (run,) = offline_runs(job)
        found = read_records(run)
        (header,) = found["run"]
        assert header["project"] == "cl_bench" and header["job_type"] == "train" and header["tags"] == ["test"]
        assert header["run_group"] == f"{sweep.parent.name}_{sweep.name}"
        assert found["exit"][0].get("exit_code", 0) == 0  # finished, and finished as a success
        expected = json.loads((job / "summary.json").read_text())
        config = header["config"]["update"]
        assert config["lr"] == expected["lr"] and config["method"]["label"] == "Baseline"
        summary = final_summary(found)
        assert summary["status"] == "ok"
        assert summary["score"] == pytest.approx(expected["score"])
        assert summary["score_k"] == pytest.approx(expected["score_k"])
        assert summary["score_test"] == pytest.approx(expected["score_test"])
        assert summary["accuracy_matrix"] == expected["accuracy_matrix"]
        assert summary["curves._type"] == "image-file" and (run / "files" / summary["curves.path"]).exists()
        rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        history = [h["item"] for h in found["history"] if "step" in h["item"]]
        assert [h["step"] for h in history] == [row["step"] for row in rows]
        val_last = [k for k in rows[-1] if k.startswith("val/")][-1]
        assert history[-1][val_last] == pytest.approx(rows[-1][val_last])
        assert {m.get("glob_name") for m in found["metric"]} >= {"val/*", "loss/*"}

    (report,) = offline_runs(sweep)  # the multirun's callback logged its table in a run of its own
    found = read_records(report)
    (header,) = found["run"]
    assert header["job_type"] == "report" and header["run_group"] == f"{sweep.parent.name}_{sweep.name}"
    summary = final_summary(found)
    assert summary["score_table._type"] == "table-file" and summary["comparison._type"] == "image-file"
    table = json.loads((report / "files" / summary["score_table.path"]).read_text())
    techniques = {row[table["columns"].index("Technique")] for row in table["data"]}
    assert techniques == {"Baseline", "Baseline (low lr)"}
    scores = {row[table["columns"].index("Technique")]: row[table["columns"].index("score")] for row in table["data"]}
    by_lr = {json.loads((job / "summary.json").read_text())["lr"]: job for job in jobs}
    expected = json.loads((by_lr[0.001] / "summary.json").read_text())["score"]
    assert scores["Baseline"] == pytest.approx(expected)


LOGGER_RUN = """
import sys, time
from pathlib import Path
from omegaconf import OmegaConf
from cl_bench.loggers.wandb import WandbLogger
logger = WandbLogger(mode="online", init_timeout=20)
started = time.perf_counter()
logger.start(OmegaConf.create({"lr": 0.1}), Path(sys.argv[1]))
logger.log_row({"step": 0, "val/A": 0.5}, 0)
logger.finish({"status": "ok", "score": 0.5}, Path(sys.argv[1]))
print(f"took {time.perf_counter() - started:.1f} s")
"""


def start_online(run_dir: Path) -> subprocess.CompletedProcess:
    """An online-mode logger in a fresh process: start, one row, finish."""
    command = [sys.executable, "-c", LOGGER_RUN, str(run_dir)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)


def user_settings_untouched(tmp_path: Path) -> bool:
    """Neither the user's W&B settings file nor a netrc was written (in the test's HOME, config dir, NETRC)."""
    written = [tmp_path / "wandb_config_dir" / "settings", tmp_path / "no.netrc", tmp_path / "home" / ".netrc",
               tmp_path / "home" / ".config" / "wandb"]
    return not any(path.exists() for path in written)


def test_an_unreachable_server_means_offline_with_a_warning_not_a_hang(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a loopback port with nothing listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")  # a one-off host: not saved as the user's
    started = time.perf_counter()
    done = start_online(tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - started < 60
    assert "unreachable; logging offline" in done.stderr
    (run,) = offline_runs(tmp_path / "run")
    assert final_summary(read_records(run))["score"] == 0.5
    assert user_settings_untouched(tmp_path)


def test_no_credentials_means_offline_never_a_prompt(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_MODE", "online")
    done = start_online(tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert "no W&B credentials" in done.stderr
    assert offline_runs(tmp_path / "run")
    assert user_settings_untouched(tmp_path)


def test_a_server_that_does_not_answer_is_named_in_the_warning(tmp_path, monkeypatch, caplog):
    """wandb.init's error for a server that accepts the connection and then says nothing can come
    without a message: the warning says what was attempted instead of nothing."""
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setattr(wandb_logger, "_offline_reason", lambda timeout: None)  # credentials, server reachable
    offline_init = wandb.init

    def silent_server(mode: str, **options):
        if mode == "online":
            raise wandb.errors.CommError("")
        return offline_init(mode=mode, **options)

    monkeypatch.setattr(wandb, "init", silent_server)
    logger = WandbLogger(mode="online", init_timeout=2)
    with caplog.at_level(logging.WARNING, logger=wandb_logger.__name__):
        logger.start(OmegaConf.create({"lr": 0.1}), tmp_path / "run")
    logger.finish({"status": "ok"}, tmp_path / "run")
    assert "W&B: W&B server http://127.0.0.1:9 did not answer within 2 s (CommError); logging offline" in caplog.text
    assert offline_runs(tmp_path / "run")


def logged_rows(run_folder: Path) -> list[dict]:
    """The metrics rows of a W&B run's history (records with a `step`), each with its W&B `_step`."""
    return [h["item"] for h in read_records(run_folder).get("history", []) if "step" in h["item"]]


def stop_at_once_at(monkeypatch, logger: type[RunLogger], stop_index: int) -> None:
    """`logger` stops the process at once (as a second Ctrl-C does: no checkpoint at the stop) right
    after it logs row `stop_index`."""
    log_row = logger.log_row

    def log_then_stop(self, row: dict, index: int) -> None:
        log_row(self, row, index)
        if index == stop_index:
            raise KeyboardInterrupt

    monkeypatch.setattr(logger, "log_row", log_then_stop)


COMMON = [TINY, "first_task.cache=false"]  # 4 rows a task; a checkpoint at task A's end (after row 3)


def test_a_resumed_run_continues_its_w_and_b_run_logging_each_row_once(make_config, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop_at_once_at(patch, WandbLogger, 6)  # rows 4-6 are past the checkpoint: computed again on resume
        with pytest.raises(KeyboardInterrupt):
            run_experiment(make_config(*COMMON, "logger=wandb"), run_dir)
    resumed = run_experiment(make_config(*COMMON, "logger=wandb", f"resume={run_dir}"), tmp_path / "resume")
    assert resumed["status"] == "ok", resumed.get("error")

    run_id = (run_dir / ".cl_bench" / "wandb_id").read_text().strip()
    first, second = offline_runs(run_dir)  # in order of start
    # offline-run-<time>-<id>, with "-1" appended by wandb when both parts start within one second
    assert all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", part.name) for part in (first, second))
    assert [read_records(part)["run"][0]["run_id"] for part in (first, second)] == [run_id, run_id]
    first_rows, second_rows = logged_rows(first), logged_rows(second)
    assert [row["_step"] for row in first_rows] == [0, 1, 2, 3, 4, 5, 6]
    assert [row["_step"] for row in second_rows] == [7]  # rows 4-6, computed again, not logged again
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in first_rows + second_rows] == [row["step"] for row in rows]
    assert final_summary(read_records(first))["curves"]["_type"] == "image-file"  # in the summary: takes no step
    curves = [h["item"] for h in read_records(second)["history"] if "curves._type" in h["item"]]
    assert [item["_step"] for item in curves] == [len(rows)]  # after the last row


def test_w_and_b_given_at_resume_gets_the_earlier_rows_from_the_metrics_file(make_config, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop_at_once_at(patch, RunLogger, 6)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(make_config(*COMMON), run_dir)
    resumed = run_experiment(
        make_config(*COMMON, "logger=wandb", f"resume={run_dir}"), tmp_path / "resume", override_keys=["logger"]
    )
    assert resumed["status"] == "ok", resumed.get("error")
    (part,) = offline_runs(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = logged_rows(part)
    assert [row["_step"] for row in logged] == list(range(len(rows)))
    assert [row["step"] for row in logged] == [row["step"] for row in rows]
    val_key = next(key for key in rows[0] if key.startswith("val/"))
    assert [row[val_key] for row in logged] == pytest.approx([row[val_key] for row in rows])


class FakeRun:
    """An online W&B run that holds `step` rows (its next step), recording what is logged."""

    offline = False

    def __init__(self, step: int):
        self.step, self.logged = step, []

    def log(self, row: dict, step: int, commit: bool) -> None:
        self.logged.append((step, row["step"]))


@pytest.mark.parametrize(
    "server_has, expected",
    [
        (6, [(6, 60)]),  # rows 4 and 5 computed again: W&B has them
        (2, [(2, 20), (3, 30), (4, 40), (5, 50), (6, 60)]),  # rows 2-5 lost in flight: sent from metrics.jsonl
    ],
)
def test_online_the_rows_sent_follow_what_w_and_b_has(tmp_path, server_has, expected):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": 10 * i}) + "\n" for i in range(7)))
    logger = WandbLogger(mode="online")
    logger.run, logger.metrics_path = FakeRun(server_has), metrics
    logger.next_row = wandb_logger._first_missing_row(logger.run, True, metrics)
    for index in (4, 5, 6):  # a resume from a checkpoint after row 3
        logger.log_row({"step": 10 * index}, index)
    assert logger.run.logged == expected


def test_a_sweep_logging_to_wandb_prints_a_few_lines_per_job_besides_its_table(tmp_path, monkeypatch):
    """Issue 26: wandb's own console lines (banner, history, summary, sync hints: about 25 per job) drowned the
    project's line per job; `logger.console=true` brings them back."""
    monkeypatch.delenv("WANDB_SILENT")

    def lines(*console: str) -> list[str]:
        sweep = tmp_path / f"sweep{len(console)}"
        done = cl_bench(tmp_path, "method=baseline,ewc", "logger=wandb", f"hydra.sweep.dir={sweep}", *console,
                        multirun=True)
        assert done.returncode == 0, done.stderr
        table = (sweep / "report.md").read_text().splitlines()
        printed = (done.stdout + done.stderr).splitlines()
        return [line for line in printed if line.strip() and line not in table and "Results table" not in line]

    quiet = lines()
    assert len(quiet) <= 1 + 3 * 2, quiet  # Hydra's "Launching 2 jobs", then at most 3 lines per job
    assert not any(line.startswith("wandb:") for line in quiet), quiet
    assert any(line.startswith("wandb:") for line in lines("logger.console=true"))
