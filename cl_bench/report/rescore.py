"""A run's Score over the window its config asks for (`score.window`, core/score.py) when its summary's
Score was made over another: a run made before `score.window` existed took its Score over the last task's points
from its step 0 (EARLIER_WINDOW; its summary has no `score_window`), and its config, which has no `score.window`,
asks for the current rule (TRAINING).

The Score, Score_k and their point are recomputed from the run's metrics.jsonl, which holds every val accuracy at
every point. The test Score is the test accuracy of the model at the Score's point, a model the run kept for its own
point only: it stands when the recomputed point is that point, and is unknown (None) when the point moved. A run
whose metrics cannot be read keeps its summary's Score, over the window it was made under."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cl_bench.core.errors import one_line
from cl_bench.core.layout import METRICS_FILE
from cl_bench.core.score import EARLIER_WINDOW, TRAINING
from cl_bench.records.metrics_log import read_rows
from cl_bench.records.summary import score_summary

log = logging.getLogger(__name__)
WINDOW_KEY = "score.window"


@dataclass(frozen=True)
class Rescored:
    """A run's summary with its Score over `window`; `test_unknown`: its test Score is not known there."""

    summary: dict
    window: str
    test_unknown: bool = False


def asked_window(config: DictConfig) -> str:
    """The Score window a run's config asks for: its `score.window`, the current rule where it has none."""
    return OmegaConf.select(config, WINDOW_KEY, default=None) or TRAINING


def made_window(summary: dict) -> str:
    """The window a finished run's summary took its Score over."""
    return summary.get("score_window", EARLIER_WINDOW)


def rescored(summary: dict, run_dir: Path, window: str) -> Rescored:
    """The run's `summary` with its Score over `window`: recomputed from its metrics when it was made over another
    (a run without an ok summary has no Score: it is taken as asked)."""
    made = made_window(summary)
    if summary.get("status") != "ok" or made == window:
        return Rescored(summary, window)
    try:
        score = score_summary(read_rows(run_dir / METRICS_FILE), summary["tasks"], summary["accuracy"], window)
    except (OSError, ValueError, LookupError, TypeError) as error:
        log.warning("%s: its Score cannot be recomputed over %s=%s (%s): shown over %s, the window it was made over",
                    run_dir, WINDOW_KEY, window, one_line(error), made)
        return Rescored(summary, made)
    moved = score["score_step"] != summary.get("score_step")
    unknown_test = {"score_test": None, "score_test_k": None} if moved else {}
    return Rescored({**summary, **score, **unknown_test}, window, moved)


def with_window(config: DictConfig, window: str) -> DictConfig:
    """`config` saying the Score `window` its run's Score follows (a copy, where it says otherwise or nothing)."""
    if OmegaConf.select(config, WINDOW_KEY, default=None) == window:
        return config
    config = copy.deepcopy(config)
    OmegaConf.update(config, WINDOW_KEY, window, merge=False, force_add=True)
    return config
