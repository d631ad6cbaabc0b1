"""Run torchtune 0.6.1's own unit tests against tunesmith through ``import torchtune``.

    .venv/bin/python benchmarks/torchtune_suite.py [--suite DIR] [--report OUT.md] [FILES...]

The suite (``../shared/assets/torchtune_tests_suite``, torchtune's ``tests/`` folder at its
v0.6.1 tag) is copied to a temporary folder unchanged and run by pytest in a subprocess with
``-p tunesmith.compat.pytest_plugin`` (the compatibility import, and torchtune's conftest
options). Results come from pytest's JUnit XML. A file that fails to import is counted with
the tests it defines (``def test_*`` times literal ``parametrize`` lists, read from its AST).
A test is *private* when its folder is ``_``-prefixed (``_cli``, ``_export``), its name starts
with ``test__``, or its name contains a ``_``-prefixed name its file imports from torchtune
(``_get_component_from_path`` -> ``test_get_component_from_path``): such tests check
torchtune's internals, not its API. The report is a Markdown table per file plus the imports
that block the most tests; ``--json`` writes the same as data.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SUITE = ROOT.parent / "shared" / "assets" / "torchtune_tests_suite"
UNIT_DIR = "tests/torchtune"


@dataclass
class FileResult:
    """One test file's outcome counts (``tests`` = collected, or the AST estimate)."""

    path: str
    tests: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    private: int = 0
    private_passed: int = 0
    collection_error: str = ""
    failures: list[str] = field(default_factory=list)


def _literal_len(node: ast.expr) -> int:
    return len(node.elts) if isinstance(node, ast.List | ast.Tuple) else 1


def _params(decorators: list[ast.expr]) -> int:
    n = 1
    for dec in decorators:
        if (
            isinstance(dec, ast.Call)
            and isinstance(dec.func, ast.Attribute)
            and dec.func.attr == "parametrize"
            and len(dec.args) >= 2
        ):
            n *= _literal_len(dec.args[1])
    return n


def static_test_count(path: Path) -> int:
    """Tests a file defines: module-level and ``Test*`` class ``test_*`` functions x params."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    total = 0
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            total += _params(node.decorator_list)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            cls = _params(node.decorator_list)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name.startswith("test"):
                    total += cls * _params(item.decorator_list)
    return total


def private_names(path: Path) -> set[str]:
    """``_``-prefixed names (not dunders) a test file imports from torchtune, normalised."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torchtune"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    out.add(alias.name.strip("_").replace("_", "").lower())
    return {n for n in out if n}


def is_private(rel: str, test_name: str, names: set[str]) -> bool:
    """Whether a test checks a private helper (see the module docstring)."""
    if any(part.startswith("_") for part in Path(rel).parts[2:-1]):
        return True
    base = test_name.split("[", 1)[0]
    if base.startswith("test__"):
        return True
    squashed = base.replace("_", "").lower()
    return any(n in squashed for n in names)


def _file_of(classname: str, files: dict[str, Path]) -> str | None:
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        rel = "/".join(parts[:i]) + ".py"
        if rel in files:
            return rel
    return None


def _first_error_line(text: str) -> str:
    for pattern in (r"(ImportError: .*)", r"(ModuleNotFoundError: .*)", r"(AttributeError: .*)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1).strip()[:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("E ")]
    return (lines[-1] if lines else text.strip().splitlines()[-1] if text.strip() else "")[:300]


def run_suite(
    suite: Path, files: list[str] | None = None, timeout: int = 3000, workers: int = 1
) -> dict[str, FileResult]:
    """Copy ``suite`` to a temporary folder, run its unit tests through tunesmith.compat."""
    with tempfile.TemporaryDirectory(prefix="torchtune-suite-") as tmp:
        work = Path(tmp)
        shutil.copytree(suite / "tests", work / "tests")
        targets = files or [UNIT_DIR]
        junit = work / "junit.xml"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(work)])
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.setdefault("OMP_NUM_THREADS", "2")
        cmd = [
            sys.executable, "-m", "pytest", "-q", "-p", "tunesmith.compat.pytest_plugin",
            "-p", "no:cacheprovider", "--without-integration", "--without-slow-integration",
            f"--junitxml={junit}", "-o", "junit_family=xunit1", "--rootdir", str(work),
            "--continue-on-collection-errors", *targets,
        ]  # fmt: skip
        if workers > 1:
            cmd += ["-n", str(workers)]
        subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        test_files = {
            str(p.relative_to(work)): p
            for target in targets
            for p in (
                [work / target] if target.endswith(".py") else (work / target).rglob("test_*.py")
            )
        }
        return _parse(junit, test_files)


def _parse(junit: Path, files: dict[str, Path]) -> dict[str, FileResult]:
    results = {rel: FileResult(rel) for rel in sorted(files)}
    names = {rel: private_names(p) for rel, p in files.items()}
    root = ET.parse(junit).getroot() if junit.is_file() else ET.Element("x")
    for case in root.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        error = case.find("error")
        rel = _file_of(classname, files)
        if rel is None and error is not None:  # a collection error names the module
            rel = _file_of(name, files)
            if rel is not None:
                r = results[rel]
                r.collection_error = _first_error_line(
                    (error.get("message") or "") + "\n" + (error.text or "")
                )
                continue
        if rel is None:
            continue
        r = results[rel]
        r.tests += 1
        private = is_private(rel, name, names[rel])
        r.private += private
        if case.find("skipped") is not None:
            r.skipped += 1
        elif case.find("failure") is not None or error is not None:
            r.failed += 1
            bad = case.find("failure") if case.find("failure") is not None else error
            r.failures.append(
                f"{name}: {_first_error_line((bad.get('message') or '') + chr(10) + (bad.text or ''))}"
            )
        else:
            r.passed += 1
            r.private_passed += private
    for rel, r in results.items():
        if r.collection_error:
            r.tests = max(r.tests, static_test_count(files[rel]))
            r.failed = r.tests - r.passed - r.skipped
    return results


def summary(results: dict[str, FileResult]) -> dict[str, float | int]:
    """Totals: every test, and the non-private ones the acceptance fraction counts."""
    tests = sum(r.tests for r in results.values())
    private = sum(r.private for r in results.values())
    passed = sum(r.passed for r in results.values())
    private_passed = sum(r.private_passed for r in results.values())
    public = tests - private
    public_passed = passed - private_passed
    return {
        "tests": tests,
        "passed": passed,
        "private": private,
        "public": public,
        "public_passed": public_passed,
        "public_fraction": public_passed / public if public else 0.0,
    }


def blocking_errors(results: dict[str, FileResult]) -> list[tuple[str, int]]:
    """Collection errors, by the number of tests they stop."""
    count: Counter[str] = Counter()
    for r in results.values():
        if r.collection_error:
            count[r.collection_error] += r.tests
    return count.most_common()


def markdown(results: dict[str, FileResult]) -> str:
    """The report: summary, blocking imports, one row per file."""
    s = summary(results)
    lines = [
        "# torchtune 0.6.1 unit tests on tunesmith (through tunesmith.compat)",
        "",
        f"{s['public_passed']} of {s['public']} non-private tests pass "
        f"({100 * s['public_fraction']:.1f}%); {s['passed']} of {s['tests']} in all "
        f"({s['private']} test private helpers).",
        "",
        "## Collection errors, by tests blocked",
        "",
    ]
    lines += [f"- {n} tests: `{err}`" for err, n in blocking_errors(results)]
    lines += ["", "## Per file", "", "| file | tests | passed | failed | skipped | private |"]
    lines += ["|---|---|---|---|---|---|"]
    for r in results.values():
        lines.append(
            f"| {r.path.removeprefix(UNIT_DIR + '/')} | {r.tests} | {r.passed} | {r.failed} | "
            f"{r.skipped} | {r.private} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: run, print the summary, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="test files relative to the suite root")
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    parser.add_argument("--report", type=Path, help="write the Markdown report here")
    parser.add_argument("--json", type=Path, help="write per-file results as JSON here")
    parser.add_argument("--workers", type=int, default=1, help="pytest-xdist workers")
    args = parser.parse_args(argv)
    if not (args.suite / UNIT_DIR).is_dir():
        print(f"error: torchtune's test suite not found at {args.suite}", file=sys.stderr)
        return 2
    results = run_suite(args.suite, args.files or None, workers=args.workers)
    text = markdown(results)
    if args.report:
        args.report.write_text(text, encoding="utf-8")
    if args.json:
        data = {"summary": summary(results), "files": [asdict(r) for r in results.values()]}
        args.json.write_text(json.dumps(data, indent=1), encoding="utf-8")
    print(text if not args.report else text.split("\n## Per file")[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
