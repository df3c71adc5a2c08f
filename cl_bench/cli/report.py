"""`cl-bench-report`: the Score table of run and multirun folders (cl_bench.report.make)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cl_bench.core.errors import one_line
from cl_bench.report.make import write_report
from cl_bench.report.settings import COLUMNS, METRICS, SPREADS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cl-bench-report", description="The Score table of run and multirun folders: report.md, report.csv, jobs.csv, comparison.png.")
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun folders")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the first folder)")
    parser.add_argument("--metric", choices=sorted(METRICS), default=None,
                        help="score: peak-average Score | final_accuracy: mean accuracy after the last task "
                             "(default: the runs' report.metric)")
    parser.add_argument("--spread", choices=sorted(SPREADS), default=None,
                        help="the ± of the table: sample std or SEM (default: the runs' report.spread)")
    parser.add_argument("--select", nargs="+", action="extend", default=[], metavar="KEY",
                        help="more dotted config keys to select the best value of by validation (e.g. lr)")
    parser.add_argument("--columns", nargs="+", action="extend", default=[], choices=COLUMNS,
                        help="more columns: final (each task's validation accuracy after the last task, Final A, "
                             "Final B, ...; added to the runs' report.columns)")
    parser.add_argument("--config-dir", type=Path, action="append", default=[], metavar="DIR",
                        help="a config folder of your own (as given to cl-bench): the targets its configs name "
                             "are allowed in the runs' saved configs")
    args = parser.parse_args(argv)
    try:
        text = write_report(args.dirs, args.out or args.dirs[0], args.metric, args.spread, tuple(args.select),
                            args.config_dir, columns=tuple(args.columns))
    except (OSError, ValueError) as error:
        parser.exit(2, f"cl-bench-report: error: {one_line(error)}\n")
    print(text)


if __name__ == "__main__":
    main()
