"""A report's table for a paper: each figure as mean ± spread in percent at the paper's precision, n stated, the best
value of each column marked (bold in LaTeX and in a notebook); and the report in the formats `cl-bench-report
--format` prints (pandas' own writers)."""

from __future__ import annotations

import math

import pandas as pd
from pandas.io.formats.style import Styler

from cl_bench.report.make import Report, csv_table
from cl_bench.report.render import status_label
from cl_bench.report.settings import METRICS, SPREADS, Settings

FORMATS = ("markdown", "csv", "latex", "json")
BOLD = "font-weight: bold"


def figure_headers(report: Report, settings: Settings) -> dict[str, str]:
    """The table's figures (their report.csv names) and their headers, in the table's order."""
    metric = METRICS[settings.metric]
    tasks = report.table.value_columns[1:-1]
    headers = {metric.val: metric.val_header}
    headers.update({column: metric.task_header.format(column[len(metric.task):]) for column in tasks})
    headers[metric.test] = metric.test_header
    headers.update({column: f"Final {column.rsplit('_', 1)[-1]}" for column in report.table.extra_columns})
    return headers


class PaperTable(Styler):
    """A paper's table as a pandas Styler: shown in a notebook (`.to_html()`), its texts in `.data`, and
    `.to_latex()` a LaTeX table (booktabs rules, texts escaped, the best of each column bold, ± as $\\pm$)."""

    def to_latex(self, **options) -> str:
        escaped = self.format(escape="latex").format_index(escape="latex", axis=1)
        latex = Styler.to_latex(escaped, **{"hrules": True, "convert_css": True, **options})
        return latex.replace(" ± ", " $\\pm$ ")


def paper_table(report: Report, settings: Settings, precision: int = 1) -> PaperTable:
    """The table with each figure as `mean ± spread` (percent, `precision` decimals; the spread is `settings`')
    and n, the best mean of each column in bold; a row without an ok run shows its state."""
    frame = report.table.frame
    headers = figure_headers(report, settings)
    texts = pd.DataFrame({"Technique": frame.Technique})
    best = pd.DataFrame(False, index=frame.index, columns=list(headers.values()))
    for column, header in headers.items():
        means = frame[column] if column in frame else pd.Series(math.nan, index=frame.index)
        spreads = frame.get(f"{column}_{settings.spread}", pd.Series(math.nan, index=frame.index))
        texts[header] = [_text(mean, spread, precision) for mean, spread in zip(means, spreads)]
        ok = means[frame.status == "ok"].dropna()
        if not ok.empty:
            best[header] = (frame.status == "ok") & (means.round(8) == round(ok.max(), 8))
    for index, row in frame.iterrows():
        if row.status != "ok":
            texts.loc[index, list(headers.values())[0]] = status_label(row.status)
    texts["n"] = frame.n.astype(int)
    styler = PaperTable(texts).hide(axis="index")
    return styler.apply(lambda column: [BOLD if flag else "" for flag in best[column.name]],
                        subset=list(headers.values()))


def _text(mean: float, spread: float, precision: int) -> str:
    if mean is None or pd.isna(mean):
        return ""
    text = f"{100 * mean:.{precision}f}"
    return text if spread is None or pd.isna(spread) else f"{text} ± {100 * spread:.{precision}f}"


def formatted(report: Report, settings: Settings, form: str, precision: int = 1) -> str:
    """The report as `form` (FORMATS): markdown, the table as the report prints it; csv and json, the table as
    report.csv holds it; latex, the paper table (booktabs rules, the best of each column bold, what ± is)."""
    if form == "markdown":
        return report.text
    if form == "csv":
        return csv_table(report).to_csv(index=False)
    if form == "json":
        return csv_table(report).to_json(orient="records", indent=2)
    if form == "latex":
        caption = (f"Mean $\\pm$ {SPREADS[settings.spread]} (\\%) over the n seeds of each row's chosen "
                   f"hyper-parameters; the best of each column in bold.")
        return paper_table(report, settings, precision).to_latex(caption=caption)
    raise ValueError(f"--format={form}: choose one of {', '.join(FORMATS)}")
