"""The run's curve figure, drawn by a helper process started with the run.

Importing matplotlib costs about 0.4-0.7 s; drawing the figure about 0.1 s. A run needs the figure
only at its end, so `cl-bench` starts `CurveFigure` before it imports torch: the helper (a Python
process running `main` below) imports matplotlib while the run's own process imports torch
(single-threaded work, so a second core is usually free), then waits on its stdin. At the run's end
the metrics rows go down the pipe, the helper draws `curves.png` and exits, and the run waits for it:
the figure exists when the run returns, as before. If the helper cannot start, fails or times out,
the figure is drawn in the run's own process instead, so it never depends on the helper.

The helper exits as soon as its stdin closes without a request, which also happens when the run's
process dies; it ignores Ctrl-C, which reaches the whole process group (the run decides).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from cl_bench.records.figures import plot_curves

log = logging.getLogger(__name__)

TIMEOUT_S = 60.0  # for the helper to draw once it has the rows (it needs ~0.1 s)
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


class CurveFigure:
    """Draws one run's curve figure, in a helper process when one could be started."""

    def __init__(self, use_helper: bool = True):
        self.process: subprocess.Popen | None = None
        if use_helper and sys.executable:
            # this very cl_bench first on the path, not whatever the working directory holds
            code = f"import sys; sys.path[0] = {str(PACKAGE_PARENT)!r}; from cl_bench.records.figure_worker import main; main()"
            try:
                self.process = subprocess.Popen(
                    [sys.executable, "-c", code],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            except OSError as error:
                log.debug("no figure helper (%s); the figure is drawn in this process", error)

    def draw(self, rows: list[dict], path: Path, title: str) -> None:
        """`plot_curves(rows, path, title)`, by the helper if it is there and succeeds."""
        process, self.process = self.process, None
        if process is not None:
            try:
                request = json.dumps({"rows": rows, "path": str(Path(path).absolute()), "title": title}).encode()
                _, errors = process.communicate(request, timeout=TIMEOUT_S)
                if process.returncode == 0:
                    return
                reason = errors.decode()[-500:].strip() or (
                    f"killed by {signal.Signals(-process.returncode).name}" if process.returncode < 0
                    else f"exit code {process.returncode}")
                log.warning("the figure helper failed (%s); drawing in this process", reason)
            except (OSError, ValueError, TypeError, subprocess.TimeoutExpired) as error:
                process.kill()
                process.wait()
                log.warning("the figure helper failed (%s); drawing in this process", error)
        plot_curves(rows, path, title)

    def close(self) -> None:
        """Stop an unused helper (it has written nothing)."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.communicate()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import matplotlib.backends.backend_agg  # noqa: F401  (what savefig draws with)
    import matplotlib.figure  # noqa: F401  (imported now, while the run is busy elsewhere)

    request = sys.stdin.buffer.read()
    if request:
        job = json.loads(request)
        plot_curves(job["rows"], Path(job["path"]), job["title"])
    sys.stderr.flush()
    os._exit(0)  # the figure file is written and closed: skip the interpreter's teardown


if __name__ == "__main__":
    main()
