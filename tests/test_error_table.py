"""Every bad-input case in tests/error_cases/ gets one line and exit 2; docs/errors.md is their table.

Each case (see ``tests/error_cases/_case.py``) is checked for: exit code 2; exactly one non-blank
line on stderr (progress-bar frames aside), starting ``error: `` and matching ``expect``; no ``Traceback`` in
either stream; its ``watch`` folder unchanged. ``test_docs_errors_md_is_current`` renders the
table and fails when the committed ``docs/errors.md`` differs; regenerate it with
``TUNESMITH_UPDATE_ERRORS=1 pytest tests/test_error_table.py``.

Cases run in this process (``tunesmith.cli.main.main`` with captured streams) unless they ask
for a subprocess.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import os
import re
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.error_cases._case import ErrorCase
from tests.error_cases._hide.sitecustomize import HidePackages

ROOT = Path(__file__).resolve().parents[1]
CASES_DIR = ROOT / "tests" / "error_cases"
DOCS = ROOT / "docs" / "errors.md"
UPDATE_ENV = "TUNESMITH_UPDATE_ERRORS"
CATEGORIES = ("config", "cli", "data", "checkpoint", "outputs", "environment")


def _load_cases() -> list[ErrorCase]:
    cases: list[ErrorCase] = []
    for path in sorted(CASES_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = importlib.import_module(f"tests.error_cases.{path.stem}")
        cases.extend(module.CASES)
    order = {c: i for i, c in enumerate(CATEGORIES)}
    return sorted(cases, key=lambda c: order.get(c.category, len(order)))  # stable within


CASES = _load_cases()


@dataclass
class Outcome:
    argv: list[str]
    code: int | None
    stdout: str
    stderr: str
    tmp: Path
    changed: list[str]


_OUTCOMES: dict[str, Outcome] = {}


def _snapshot(folder: Path) -> dict[str, str]:
    """relative path -> content hash (``"dir"`` for folders) of everything under ``folder``."""
    if not folder.exists():
        return {}
    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run_in_process(argv: list[str], tmp: Path, env: dict[str, str]) -> tuple[int | None, str, str]:
    from tunesmith.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    saved_env = {k: os.environ.get(k) for k in [*env, "TUNESMITH_DEBUG"]}
    cwd = os.getcwd()
    os.environ.update(env)
    os.environ.pop("TUNESMITH_DEBUG", None) if "TUNESMITH_DEBUG" not in env else None
    hidden = {n.strip() for n in env.get("TS_HIDE_PACKAGES", "").split(",") if n.strip()}
    finder = HidePackages(hidden)
    unloaded = {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name.split(".")[0] in hidden and sys.modules.get(name) is not None
    }
    sys.meta_path.insert(0, finder)
    try:
        os.chdir(tmp)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code: int | None = main(list(argv))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) or e.code is None else 1
                if not isinstance(e.code, int) and e.code is not None:
                    print(e.code, file=sys.stderr)
            except BaseException:  # a crash is a result to report, not a test error
                traceback.print_exc()
                code = 1
    finally:
        sys.meta_path.remove(finder)
        sys.modules.update(unloaded)
        os.chdir(cwd)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        logging.getLogger("tunesmith").setLevel(logging.INFO)  # a config's log_level
    return code, out.getvalue(), err.getvalue()


def _run_subprocess(argv: list[str], tmp: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """``python -m tunesmith argv`` in ``tmp``; a case's ``PYTHONPATH`` goes first on the path."""
    paths = [
        env.get("PYTHONPATH", ""),
        str(ROOT / "src"),
        str(ROOT),
        str(ROOT / "tests" / "recipes"),
    ]
    base = {k: v for k, v in os.environ.items() if k != "TUNESMITH_DEBUG"}
    pythonpath = os.pathsep.join(p for p in [*paths, base.get("PYTHONPATH", "")] if p)
    result = subprocess.run(
        [sys.executable, "-m", "tunesmith", *argv],
        cwd=tmp,
        env={**base, **env, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, result.stdout, result.stderr


def _slug(kind: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", kind).strip("_")[:40] or "case"


def _run_case(case: ErrorCase, tmp: Path, argv: list[str]) -> Outcome:
    watched = tmp / case.watch
    before = _snapshot(watched)
    runner = _run_subprocess if case.subprocess else _run_in_process
    code, stdout, stderr = runner(argv, tmp, case.env)
    after = _snapshot(watched)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if not before and after and all(v == "dir" for v in after.values()):
        changed = []  # created empty folders only
    return Outcome(argv, code, stdout, stderr, tmp, changed)


def _prepare(case: ErrorCase, factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tmp = factory.mktemp(_slug(case.kind), numbered=True)
    return tmp, [str(a) for a in case.build(tmp)]


def _run_subprocess_cases(factory: pytest.TempPathFactory) -> None:
    """Run every subprocess case at once, in parallel: each mostly waits on imports."""
    todo = [c for c in CASES if c.subprocess and c.kind not in _OUTCOMES]
    prepared = [(c, *_prepare(c, factory)) for c in todo]
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        futures = {c.kind: pool.submit(_run_case, c, tmp, argv) for c, tmp, argv in prepared}
    for kind, future in futures.items():
        _OUTCOMES[kind] = future.result()


def _outcome(case: ErrorCase, factory: pytest.TempPathFactory) -> Outcome:
    if case.kind not in _OUTCOMES:
        if case.subprocess:
            _run_subprocess_cases(factory)
        else:
            _OUTCOMES[case.kind] = _run_case(case, *_prepare(case, factory))
    return _OUTCOMES[case.kind]


_PROGRESS = re.compile(r"(\d+|\?)\s*(it|s|examples|step|steps|B|kB|MB|GB)/s\]|\[\d+:\d+<")


def _error_lines(outcome: Outcome) -> list[str]:
    """Non-blank stderr lines, without progress-bar frames (tqdm's ``... [00:00, 5.1it/s]``)."""
    return [
        line for line in outcome.stderr.splitlines() if line.strip() and not _PROGRESS.search(line)
    ]


def test_cases_are_well_formed() -> None:
    kinds = [c.kind for c in CASES]
    assert len(kinds) == len(set(kinds)), "two error cases share a kind"
    for case in CASES:
        assert case.category in CATEGORIES, f"{case.kind}: unknown category {case.category!r}"
        re.compile(case.expect)


@pytest.mark.parametrize("case", CASES, ids=[_slug(c.kind) for c in CASES])
def test_error_case(case: ErrorCase, tmp_path_factory: pytest.TempPathFactory) -> None:
    outcome = _outcome(case, tmp_path_factory)
    shown = f"$ tunesmith {' '.join(outcome.argv)}\n--- stderr\n{outcome.stderr}"
    assert "Traceback" not in outcome.stderr + outcome.stdout, shown
    assert outcome.code == 2, f"exit code {outcome.code}\n{shown}"
    lines = _error_lines(outcome)
    assert len(lines) == 1, f"stderr must be one line, got {len(lines)}\n{shown}"
    assert lines[0].startswith("error: "), shown
    assert re.search(case.expect, lines[0]), f"{case.expect!r} not in the line\n{shown}"
    assert not outcome.changed, f"{case.watch}/ changed: {outcome.changed[:10]}\n{shown}"


def _cell(text: str, tmp: Path) -> str:
    for path in {str(tmp), str(tmp.resolve())}:
        text = text.replace(path, "<tmp>")
    text = text.replace(str(ROOT), "<repo>")
    text = re.sub(r"http://127\.0\.0\.1:\d+", "<fake hub>", text)  # tests/_fake_hub.py
    return text.replace("|", "\\|").strip()


def render_table(cases: list[ErrorCase], outcomes: dict[str, Outcome]) -> str:
    lines = [
        "# What each mistake gets",
        "",
        "<!-- Generated by tests/test_error_table.py from tests/error_cases/*.py; do not edit.",
        f"     Regenerate: {UPDATE_ENV}=1 pytest tests/test_error_table.py -->",
        "",
        "Every kind of bad input below was run by the test suite (`tests/test_error_table.py`).",
        "Each exits with code 2 and prints exactly one line on stderr, shown here; none prints",
        "a traceback or creates, changes or removes anything in the run's output folder.",
        "`--debug` (or `TUNESMITH_DEBUG=1`) adds the traceback. `<tmp>` stands for the folder",
        "the case ran in.",
        "",
        f"{len(cases)} kinds.",
        "",
        "| category | kind | what was run | message |",
        "| --- | --- | --- | --- |",
    ]
    for case in cases:
        outcome = outcomes[case.kind]
        error = _error_lines(outcome)
        message = error[0] if len(error) == 1 else f"(not one line: {len(error)} lines)"
        command = "tunesmith " + " ".join(outcome.argv)
        env = " ".join(f"{k}={v}" for k, v in sorted(case.env.items()))
        run = f"{env} {command}".strip()
        lines.append(
            f"| {case.category} | {_cell(case.kind, outcome.tmp)} | "
            f"`{_cell(run, outcome.tmp)}` | {_cell(message, outcome.tmp)} |"
        )
    return "\n".join(lines) + "\n"


def test_docs_errors_md_is_current(tmp_path_factory: pytest.TempPathFactory) -> None:
    outcomes = {c.kind: _outcome(c, tmp_path_factory) for c in CASES}
    text = render_table(CASES, outcomes)
    if os.environ.get(UPDATE_ENV, "") not in ("", "0"):
        DOCS.write_text(text, encoding="utf-8")
    current = DOCS.read_text(encoding="utf-8") if DOCS.is_file() else ""
    assert current == text, (
        f"docs/errors.md is stale: regenerate it with {UPDATE_ENV}=1 pytest "
        "tests/test_error_table.py"
    )
