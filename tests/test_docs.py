"""README.md and docs/*.md as a reader uses them: every command marked runnable runs, every relative link
leads somewhere, the README's layout tree and printed table are what the repository has and prints.

Marking, in a page: a fenced block whose info string is `bash runnable` holds commands a reader can
copy; `bash runnable exit=N` ends with the documented exit code N (otherwise 0); `python runnable` holds
Python a reader runs (with the budgets it gives: it is not shrunk). A block whose info
string names a file (`python file=my_data.py`, `yaml file=my_conf/dataset/x.yaml`) is written there
first. A page's blocks run in order, as a reader follows it, in one empty folder: `outputs/` is made
there. Commands that cannot run here are listed on their page with the reason, not marked.

Shrinking: `cl-bench` is found first in a folder of the test's own, where a small wrapper appends
`+debug=tiny first_task.epochs=null epochs=null` (conf/debug/tiny.yaml: two 30-step tasks, one thread;
the command's own budget keys are dropped so that the preset applies) and runs the installed
`cl-bench`. With `resume=` it adds only `threads=1`: a resumed run keeps its config. Blocks that use
MNIST get `data_dir` set to the real MNIST, found as tests/test_experiments.py finds it
(`../shared/data` beside the repository, or $CL_BENCH_MNIST_DIR); without it they are skipped, and
with CI=true that is a failure. Set-up steps the test environment has already done (`python3 -m venv`,
activating it, `pip install`) are left out of a command line.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cl_bench.core.layout import CONFIG_DIR
from cl_bench.data.sources import MNIST_FILES

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
REAL_MNIST = Path(os.environ.get("CL_BENCH_MNIST_DIR", CONFIG_DIR.parent.parent / "shared" / "data"))

TINY = (
    ["+debug=tiny"]
    if (CONFIG_DIR / "debug" / "tiny.yaml").exists()
    else ["first_task.steps=20", "steps=20", "eval_every=10", "threads=1"]
)
SHRINK = [*TINY, "first_task.epochs=null", "epochs=null"]  # experiments budget in epochs: steps instead
BUDGET_KEYS = {"steps", "epochs", "first_task.steps", "first_task.epochs", "eval_every", "threads"}
SETUP_STEPS = (r"python3? -m venv \S+", r"(\.|source) \S*activate", r"pip install .*")
FLAGS_WITH_VALUE = {
    "--config-dir",
    "-cd",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--experimental-rerun",
}
BLOCK_TIMEOUT = 300

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    info: list[str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return "runnable" in self.info[1:]

    @property
    def file(self) -> str | None:
        return next((word.split("=", 1)[1] for word in self.info[1:] if word.startswith("file=")), None)

    @property
    def exit_code(self) -> int:
        return next((int(word.split("=", 1)[1]) for word in self.info[1:] if word.startswith("exit=")), 0)


def blocks(page: Path) -> list[Block]:
    """The page's fenced blocks, in order (an indented fence, in a list item, included)."""
    found, opened, lines = [], None, page.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if not match:
            continue
        if opened is None:
            opened = (number, match["info"].split(), len(match["indent"]))
        elif not match["info"].strip():
            start, info, indent = opened
            body = [text[indent:] if not text[:indent].strip() else text for text in lines[start : number - 1]]
            found.append(Block(page, start, info, "\n".join(body) + "\n"))
            opened = None
    assert opened is None, f"{page.name}: the block opened at line {opened[0]} is not closed"
    return found


def outside_blocks(page: Path) -> list[tuple[int, str]]:
    """The page's lines that are not inside a fenced block, with their numbers."""
    kept, inside = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            kept.append((number, line))
    return kept


def without_setup(script: str) -> str:
    """Each line without the `&&`-joined set-up steps the test environment has already done."""
    lines = []
    for line in script.splitlines():
        parts = [
            part for part in line.split(" && ") if not any(re.fullmatch(step, part.strip()) for step in SETUP_STEPS)
        ]
        lines.append(" && ".join(parts))
    return "\n".join(lines) + "\n"


def needs_mnist(block: Block) -> bool:
    return "mnist" in block.text.lower()


def mnist_dir() -> Path | None:
    raw = REAL_MNIST / "MNIST" / "raw"
    if all((raw / name).exists() or (raw / f"{name}.gz").exists() for name in MNIST_FILES):
        return REAL_MNIST
    return None


def write_wrapper(folder: Path) -> Path:
    """`folder/cl-bench`: the installed cl-bench with the shrinking overrides."""
    real = Path(sys.executable).with_name("cl-bench")
    if not real.exists():
        real = Path(shutil.which("cl-bench") or "cl-bench")
    wrapper = folder / "cl-bench"
    wrapper.write_text(f"""#!{sys.executable}
import os, sys
flags, args, given = [], [], iter(sys.argv[1:])
for arg in given:  # Hydra's flags first, then every override (argparse takes no override after a flag)
    if arg.startswith("-"):
        flags.append(arg)
        if arg in {sorted(FLAGS_WITH_VALUE)!r}:
            flags.append(next(given))
    else:
        args.append(arg)
def key(arg):
    return arg.split("=", 1)[0].lstrip("+~") if "=" in arg else None
if any(arg.startswith("resume=") for arg in args):
    args += ["threads=1"]
else:
    args = [arg for arg in args if key(arg) not in {sorted(BUDGET_KEYS)!r}] + {SHRINK!r}
if os.environ.get("DOCS_TEST_MNIST"):
    args = [arg for arg in args if key(arg) != "data_dir"] + ["data_dir=" + os.environ["DOCS_TEST_MNIST"]]
os.execv({str(real)!r}, [{str(real)!r}, *flags, *args])
""")
    wrapper.chmod(0o755)
    return wrapper


@dataclass
class Ran:
    block: Block
    done: subprocess.CompletedProcess | None  # None: skipped (no MNIST)


RUNS: dict[Path, tuple[Ran, ...]] = {}


def page_run(page: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Ran, ...]:
    """The page's run, once per test session (the README's is read by two tests)."""
    if page not in RUNS:
        RUNS[page] = run_page(page, tmp_path_factory.mktemp(page.stem))
    return RUNS[page]


def run_page(page: Path, folder: Path) -> tuple[Ran, ...]:
    """Every file block written and every runnable block run, in order, in `folder`."""
    bin_dir = folder / ".docs-test-bin"
    bin_dir.mkdir(parents=True)
    write_wrapper(bin_dir)
    mnist = mnist_dir()
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "DOCS_TEST_MNIST": str(mnist or ""),
    }
    ran = []
    for block in blocks(page):
        if block.file:
            target = folder / block.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text)
        if not block.runnable:
            continue
        if needs_mnist(block) and mnist is None:
            ran.append(Ran(block, None))
            continue
        if block.info[0] == "python":  # Python, as a reader runs it: budgets as the block gives them
            command = [sys.executable, "-c", block.text]
        else:
            command = ["bash", "-c", "set -eo pipefail\n" + without_setup(block.text)]
        done = subprocess.run(
            command,
            check=False,
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
        )
        ran.append(Ran(block, done))
    return tuple(ran)


RUNNABLE_PAGES = [page for page in PAGES if any(block.runnable for block in blocks(page))]


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=[page.name for page in RUNNABLE_PAGES])
def test_every_runnable_command_of_the_page_runs(page, tmp_path_factory):
    results = page_run(page, tmp_path_factory)
    for result in results:
        if result.done is None:
            continue
        done, block = result.done, result.block
        assert done.returncode == block.exit_code, (
            f"{block.where}: exit code {done.returncode}, documented {block.exit_code}\n{block.text}\n"
            f"--- stdout (end)\n{done.stdout[-3000:]}\n--- stderr (end)\n{done.stderr[-3000:]}"
        )
    skipped = [result.block.where for result in results if result.done is None]
    if skipped:
        message = f"the real MNIST is not in {REAL_MNIST} (set CL_BENCH_MNIST_DIR): not run: {', '.join(skipped)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def main_job_table(text: str) -> list[str]:
    """The Markdown table that follows the heading 'What the main job prints'."""
    section = text.split("## What the main job prints", 1)[1]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Technique"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end] + [next(line for line in lines[end:] if line.strip())]  # with the note under it


def test_the_readme_shows_the_table_and_lines_the_main_job_prints(tmp_path_factory):
    main_job = next(
        result
        for result in page_run(README, tmp_path_factory)
        if "method=baseline,lowlr,ewc,kd,l2,joint,replay" in result.block.text
    )
    assert main_job.done is not None and main_job.done.returncode == 0, main_job.done and main_job.done.stderr
    printed = main_job.done.stdout.splitlines()
    shown = main_job_table(README.read_text())
    header, rule, rows, note = shown[0], shown[1], shown[2:-1], shown[-1]
    assert header in printed and rule in printed and note in printed
    printed_rows = [line for line in printed if line.startswith("| ") and line not in (header, rule)]
    assert [row.split(" | ")[0] for row in printed_rows] == [row.split(" | ")[0] for row in rows]
    assert all(len(row.split("|")) == len(header.split("|")) for row in rows)
    ended = re.compile(r"cl-bench: (.+): Score \d+\.\d% \(test \d+\.\d%\) · \S+/multirun/\S+/\d+")
    started = re.compile(r"cl-bench: #\d+ started \((.+)\) · \S+/multirun/\S+/\d+")
    for line_kind in (started, ended):
        assert len([line for line in printed if line_kind.fullmatch(line)]) == len(rows), line_kind.pattern
    examples = re.findall(r"`(cl-bench: [^`]+ · <its folder>)`", README.read_text())
    assert examples and all(
        ended.fullmatch(example.replace("<its folder>", "outputs/multirun/d/t/2"))
        or started.fullmatch(example.replace("<its folder>", "outputs/multirun/d/t/2"))
        for example in examples
    )


def test_the_readme_test_command_is_the_one_ci_runs():
    after = README.read_text().split("Run the tests", 1)[1]
    command = next(block for block in blocks(README) if block.text.strip() and block.text.strip() in after)
    readme = command.text.strip()
    ci = next(line for line in (REPO / ".ci" / "run").read_text().splitlines() if "pytest" in line)
    assert ci.replace("pip install -q ", "pip install ").strip() == readme


def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings (lower case, punctuation dropped, spaces to
    hyphens, repeats numbered)."""
    anchors, seen = set(), {}
    for _, line in outside_blocks(page):
        heading = re.match(r"^#{1,6} (.+)$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-")
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    broken = []
    for number, line in outside_blocks(page):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"^[a-z][a-z+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}:{number}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in github_anchors(file):
                broken.append(f"{page.name}:{number}: {target} (no such heading)")
    assert broken == []


REPO_PATH = re.compile(r"(?<![\w./-])(?:\.ci|benchmarks|cl_bench|conf|docs|scripts|tests)/[\w./-]*")
EXAMPLE_NAMES = ("l1_anchor", "tiny_cnn")  # extending.md's worked examples, as they would be named in the repository


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_repository_path_named_in_code_exists(page):
    """`benchmarks/runner.py`, `conf/method/ewc.yaml`, ... in the page's code spans and blocks: files move."""
    missing = []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        for path in REPO_PATH.findall(" ".join(re.findall(r"`([^`]+)`", line)) if "```" not in line else ""):
            path = path.rstrip(".")
            if not any(name in path for name in EXAMPLE_NAMES) and not (REPO / path).exists():
                missing.append(f"{page.name}:{number}: {path}")
    for block in blocks(page):
        if block.file or block.runnable or (block.info and block.info[0] not in ("bash", "")):
            continue
        for path in REPO_PATH.findall(block.text):
            if not any(name in path for name in EXAMPLE_NAMES) and not (REPO / path.rstrip(".")).exists():
                missing.append(f"{block.where}: {path}")
    assert missing == []


def layout_tree() -> list[tuple[str, str, str]]:
    """(parent, name, description) of each entry of the README's layout block."""
    text = README.read_text().split("## Layout", 1)[1]
    block = next(block for block in blocks(README) if block.text in text)
    entries, parent = [], ""
    for line in block.text.splitlines():
        indent = len(line) - len(line.lstrip())
        names, _, description = line.strip().partition("  ")
        if indent == 0:
            parent = names if names.endswith("/") else ""
            entries.append(("", names, description.strip()))
        elif indent == 2:
            entries.extend((parent, name, description.strip()) for name in names.split())
    return entries


def test_the_readme_layout_names_what_the_repository_has():
    entries = layout_tree()
    missing = [
        parent + name
        for parent, name, description in entries
        if "<" not in name and "git-ignored" not in description and not (REPO / parent / name).exists()
    ]
    assert missing == []
    listed = {parent + name.rstrip("/") for parent, name, _ in entries}
    packages = {f"cl_bench/{path.parent.name}" for path in (REPO / "cl_bench").glob("*/__init__.py")}
    ignored = [line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines() if line.strip()]
    folders = {
        path.name
        for path in REPO.iterdir()
        if path.is_dir()
        and not path.name.startswith(".")
        and not any(fnmatch.fnmatch(path.name, pattern) for pattern in ignored)
    }
    assert packages - listed == set() and folders - listed == set()


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_the_sources_are_named_not_numbered(page):
    assert not re.search(r"\bseed 00\d\b", page.read_text(), re.IGNORECASE)


def test_marked_blocks_are_bash_or_python_and_say_only_what_the_test_reads():
    for page in PAGES:
        for block in blocks(page):
            options = block.info[1:]
            if block.runnable:
                assert block.info[0] in ("bash", "python"), block.where
            assert all(o == "runnable" or o.startswith(("exit=", "file=")) for o in options), block.where
