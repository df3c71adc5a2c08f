"""The folders an invocation of `cl-bench` works in, checked before Hydra creates or writes into them
(the `on_run_start` and `on_multirun_start` callbacks run before Hydra makes a job's folder):

- a folder given with `hydra.run.dir=` or `hydra.sweep.dir=` is new, empty, or one that cl_bench made
  (a run folder, a sweep folder); any other is refused, and nothing is written into it;
- `resume=<run folder>` works in that run's own folder: Hydra's record of the start goes there, and no
  other folder is made (nor removed: nothing is ever deleted that this invocation did not create).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cl_bench.core.layout import SWEEP_RECORD
from cl_bench.records.run_folder import check_folder_to_write, check_resumable, foreign_entries


class Refused(ValueError):
    """A folder this invocation may not work in; the message says what to give instead."""


def hydra_override(config: DictConfig, key: str) -> str | None:
    """The value of `key` (e.g. hydra.run.dir) as given on the command line, or None."""
    given = OmegaConf.to_container(config.hydra.overrides.hydra, resolve=False)
    for override in OverridesParser.create().parse_overrides(given):
        if override.key_or_group == key:
            return str(override.value())
    return None


def prepare_run(config: DictConfig) -> None:
    """Before a single run's folder is made: with `resume=`, make the resumed run's folder the run's folder
    (Refused when it is not a run folder, or `hydra.run.dir` names another one); without, refuse a
    `hydra.run.dir` that holds files no cl_bench run made."""
    run_dir = Path(str(config.hydra.run.dir)).expanduser().resolve()
    if not config.get("resume"):
        check_folder_to_write(run_dir, "hydra.run.dir")
        return
    folder = Path(str(config.resume)).expanduser().resolve()
    check_resumable(folder, str(config.resume))
    check_folder_to_write(folder, "resume")
    if hydra_override(config, "hydra.run.dir") is not None and run_dir != folder:
        raise Refused(f"resume={config.resume} continues the run in its own folder; hydra.run.dir={run_dir} names "
                      f"another: leave hydra.run.dir out")
    with read_write(config.hydra.run), open_dict(config.hydra.run):
        config.hydra.run.dir = str(folder)


def prepare_sweep(config: DictConfig) -> None:
    """Before a sweep's folder is made: refuse `resume=` (it continues one run) and a `hydra.sweep.dir`
    that holds files but is not a sweep's folder."""
    if config.get("resume"):
        raise Refused("resume= continues one run in its own folder, not a sweep: run cl-bench resume=<run folder> "
                      "once for each run to continue")
    sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser().resolve()
    if foreign_entries(sweep_dir) and not (sweep_dir / SWEEP_RECORD).is_file():
        check_folder_to_write(sweep_dir, "hydra.sweep.dir")
