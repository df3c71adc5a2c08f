"""`cl-bench-report`: the Score table of run and multirun folders (cl_bench.report.make): the report's files
written, and the table printed in the `--format` asked for (cl_bench.report.paper)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cl_bench.core.errors import one_line
from cl_bench.report.make import make_report, write
from cl_bench.report.paper import FORMATS, formatted
from cl_bench.report.settings import COLUMNS, METRICS, SPREADS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cl-bench-report",
        description="The Score table of run and multirun folders: report.md, report.csv, jobs.csv, comparison.png.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun folders")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the first folder)")
    parser.add_argument("--metric", choices=sorted(METRICS), default=None,
                        help="score: peak-average Score | final_accuracy: mean accuracy after the last task | "
                             "final_task_aware_accuracy: the same, class-IL's task-aware accuracy "
                             "(default: the runs' report.metric)")
    parser.add_argument("--spread", choices=sorted(SPREADS), default=None,
                        help="the ± of the table: sample std or SEM (default: the runs' report.spread)")
    parser.add_argument("--select", nargs="+", action="extend", default=[], metavar="KEY",
                        help="more dotted config keys to select the best value of by validation (e.g. lr)")
    parser.add_argument("--columns", nargs="+", action="extend", default=[], choices=COLUMNS,
                        help="more columns: final (each task's validation accuracy after the last task, Final A, "
                             "Final B, ...; added to the runs' report.columns)")
    parser.add_argument("--format", choices=FORMATS, default="markdown", dest="form",
                        help="what is printed: markdown (the report), csv or json (the table as report.csv holds "
                             "it), latex (a paper's table: mean ± spread, n, the best of each column in bold)")
    parser.add_argument("--precision", type=int, default=1, metavar="N",
                        help="decimals of the percentages of --format latex (default 1)")
    parser.add_argument("--config-dir", type=Path, action="append", default=[], metavar="DIR",
                        help="a config folder of your own (as given to cl-bench): the targets its configs name "
                             "are allowed in the runs' saved configs")
    args = parser.parse_args(argv)
    out = args.out or args.dirs[0]
    try:
        report = make_report(args.dirs, out, args.metric, args.spread, tuple(args.select), args.config_dir,
                             columns=tuple(args.columns))
        write(report, out)
        print(formatted(report, report.settings, args.form, args.precision))
    except (OSError, ValueError) as error:
        parser.exit(2, f"cl-bench-report: error: {one_line(error)}\n")


if __name__ == "__main__":
    main()
