#!/usr/bin/env python3
"""Build the environment ``make`` runs in: which torch, where, and tunesmith on top of it.

Called by the Makefile's stamp target (``make venv | demo | test | ...``); stdlib only, so it
runs on any Python 3.11+ before anything is installed. ``TORCH`` picks the torch build:

* ``auto`` (default): if the active environment (``$VIRTUAL_ENV``, ``$CONDA_PREFIX``, else
  the ``python3`` on ``PATH``) already has a CUDA or ROCm torch, reuse it: ``.venv`` is
  created as an *overlay* of that environment (a ``.pth`` file puts its site-packages after
  ``.venv``'s own) and torch is pinned to the version found, so pip neither replaces nor
  shadows it and the user's environment is left untouched. Otherwise: the CPU build;
* ``cpu``: torch ``2.13.0+cpu`` from ``https://download.pytorch.org/whl/cpu`` (PyPI's build
  where that index is unreachable);
* ``cu126``, ``cu128``, ``rocm6.4``, ...: torch ``2.13.0+<TORCH>`` from
  ``https://download.pytorch.org/whl/<TORCH>`` into ``.venv``;
* ``env``: reuse the active environment's torch whatever its build (error if it has none).

``VENV=<an existing environment with torch>`` (for example ``VENV=$VIRTUAL_ENV``) installs
tunesmith into that environment itself, torch pinned to the version it has.
``WHEELS=<folder>`` installs with ``pip --no-index --find-links <folder>``: nothing is
fetched, every wheel (torch's too, unless reused) must be in the folder.

    python3 scripts/setup_env.py --torch cu128 --venv .venv --stamp .venv/.installed-cu128
    python3 scripts/setup_env.py --torch auto --venv .venv --dry-run     # print the plan
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_INDEX = "https://download.pytorch.org/whl"
MARKER = ".tunesmith-venv"  # written into every environment this script created
PIN = "torch-pin.txt"

_PROBE = r"""
import importlib.metadata as md, importlib.util as iu, json, os, sys
out = {"python": sys.executable, "prefix": sys.prefix, "version": sys.version.split()[0]}
try:
    out["torch"] = md.version("torch")
    spec = iu.find_spec("torch")
    lib = os.path.join(os.path.dirname(spec.origin), "lib") if spec and spec.origin else ""
    names = os.listdir(lib) if os.path.isdir(lib) else []
    out["cuda"] = any(n.startswith(("libtorch_cuda", "libtorch_hip")) for n in names)
except Exception:
    out["torch"] = None
    out["cuda"] = False
import sysconfig
out["site"] = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
print(json.dumps(out))
"""


class SetupError(Exception):
    """A user's mistake: one line, exit 2."""


@dataclass
class Plan:
    """What ``setup`` does: ``mode`` is ``overlay`` | ``inplace`` | ``install``."""

    mode: str
    torch: str  # the TORCH value asked for
    base_python: str  # the interpreter the venv is created from (or the env's own)
    found: dict | None = None  # probe of the environment whose torch is reused
    commands: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def probe(python: str) -> dict | None:
    """Torch version / CUDA-ness / site dirs of ``python``, without importing torch."""
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def active_pythons(env: dict[str, str], default: str) -> list[str]:
    """Interpreters of the active environment, most specific first."""
    out = []
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        if env.get(var):
            out.append(str(Path(env[var]) / "bin" / "python"))
    out.append(default)
    return out


def _same(a: str, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def resolve(
    torch: str,
    venv: Path,
    env: dict[str, str],
    python: str,
    probe_fn=probe,
) -> Plan:
    """Pick the mode: reuse an existing torch (overlay / in place) or install one into ``venv``."""
    if not (
        torch in ("auto", "env", "cpu") or re.fullmatch(r"cu\d{3,}|rocm\d+(\.\d+)*|xpu", torch)
    ):
        raise SetupError(
            f"TORCH={torch}: use auto, env, cpu or a PyTorch wheel index such as cu126, cu128 "
            "or rocm6.4"
        )
    venv_python = venv / "bin" / "python"
    ours = (venv / MARKER).exists() or (venv / ".installed").exists()  # or an older make's
    if venv_python.exists() and not ours:
        found = probe_fn(str(venv_python))
        if found and found.get("torch"):  # VENV=<the user's own environment>
            if torch not in ("auto", "env"):
                raise SetupError(
                    f"VENV={venv} is not an environment tunesmith created: it keeps its torch "
                    f"{found['torch']}; drop TORCH={torch} or pick another VENV"
                )
            return Plan("inplace", torch, str(venv_python), found)
        raise SetupError(
            f"VENV={venv}: is an environment tunesmith did not create and it has no torch; "
            "install torch there first, or pick another VENV"
        )
    if torch in ("auto", "env"):
        for candidate in active_pythons(env, python):
            if candidate != python and not Path(candidate).exists():
                continue
            found = probe_fn(candidate)
            if not found or _same(found["prefix"], venv):  # .venv itself is active
                continue
            if found.get("torch") and (found["cuda"] or torch == "env"):
                return Plan("overlay", torch, candidate, found)
        if torch == "env":
            raise SetupError(
                "TORCH=env: the active environment has no torch; activate one that has, or "
                "use TORCH=cpu / TORCH=cu128"
            )
        torch = "cpu"
        plan = Plan("install", "cpu", python)
        plan.notes.append("no CUDA torch in the active environment: installing the CPU build")
        return plan
    return Plan("install", torch, python)


def build_commands(
    plan: Plan,
    venv: Path,
    torch_version: str,
    extras: str,
    wheels: str | None,
    index: str = TORCH_INDEX,
) -> list[list[str]]:
    """The commands ``setup`` runs for ``plan``, in order (shell words)."""
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q"]
    offline = ["--no-index", "--find-links", wheels] if wheels else []
    cmds: list[list[str]] = []
    if plan.mode != "inplace":
        new = [plan.base_python, "-m", "venv"]
        cmds.append(
            ["test", "-x", py, "||", *new, str(venv), "||", *new, "--without-pip", str(venv)]
        )
    if plan.mode == "overlay":
        cmds.append([sys.executable, __file__, "--link", plan.base_python, "--venv", str(venv)])
    if not wheels:
        cmds.append([*pip, "--upgrade", "pip"])
    if plan.mode == "install":
        spec = f"torch=={torch_version}+{plan.torch}"
        if wheels:
            cmds.append([*pip, *offline, spec])
        else:
            first = [*pip, "--retries", "0", "--timeout", "20", "--index-url"]
            first += [f"{index}/{plan.torch}", spec]
            if plan.torch == "cpu":  # PyPI's build where the CPU index is unreachable
                cmds.append([*first, "||", *pip, f"torch=={torch_version}"])
            else:
                cmds.append(first)
    target = f".[{extras}]" if extras else "."
    if wheels:
        cmds.append([*pip, *offline, "setuptools>=68", "wheel"])
        cmds.append([*pip, *offline, "--no-build-isolation", "-e", target])
    else:
        cmds.append([*pip, "-e", target])
    return cmds


def constraint_file(plan: Plan, venv: Path) -> Path:
    """``constraints.txt`` (torch==2.13.0) for installs; the found version when reusing."""
    if plan.mode == "install":
        return REPO / "constraints.txt"
    pin = venv / PIN
    if plan.found:
        version = plan.found["torch"]
        pin.parent.mkdir(parents=True, exist_ok=True)
        pin.write_text(
            "# tunesmith reuses this environment's torch; pip must not replace it.\n"
            f"torch=={version}\n"
        )
    return pin


def link(parent_python: str, venv: Path) -> None:
    """Make ``venv`` see ``parent_python``'s packages after its own (a ``.pth`` file)."""
    found = probe(parent_python)
    mine = probe(str(venv / "bin" / "python"))
    if not found or not mine:
        raise SetupError(f"cannot run {parent_python} or {venv}/bin/python")
    site = Path(next(p for p in mine["site"] if "site-packages" in p))
    lines = [p for p in found["site"] if p not in mine["site"]]
    (site / "_tunesmith_parent_env.pth").write_text("\n".join(lines) + "\n")


def _shell(cmd: list[str]) -> str:
    return " ".join(w if w == "||" else shlex.quote(w) for w in cmd)


def setup(args: argparse.Namespace) -> int:
    venv = Path(args.venv)
    plan = resolve(args.torch, venv, dict(os.environ), args.python)
    cmds = build_commands(plan, venv, args.torch_version, args.extras, args.wheels)
    reused = plan.found and f"{plan.found['torch']} from {plan.found['prefix']}"
    head = {
        "overlay": f"reusing torch {reused} (overlay .venv, torch pinned)",
        "inplace": f"installing into {venv} itself, keeping its torch {reused}",
        "install": f"installing torch {args.torch_version}+{plan.torch} into {venv}",
    }[plan.mode]
    print(f"setup_env: {head}" + (f" (offline, wheels from {args.wheels})" if args.wheels else ""))
    for note in plan.notes:
        print(f"setup_env: {note}")
    if args.dry_run:
        for c in cmds:
            print(_shell(c))
        return 0
    if args.wheels and not Path(args.wheels).is_dir():
        raise SetupError(f"WHEELS={args.wheels}: no such folder")
    marker = venv / MARKER
    want = {"torch": plan.torch, "mode": plan.mode}
    if marker.is_file() and json.loads(marker.read_text()) != want:
        print(f"setup_env: {venv} was built for {marker.read_text().strip()}: rebuilding it")
        shutil.rmtree(venv)
    env = dict(os.environ, PIP_CONSTRAINT=str(constraint_file(plan, venv)))
    for c in cmds:
        rc = subprocess.run(_shell(c), shell=True, env=env).returncode
        if rc != 0:
            print(f"setup_env: failed ({rc}): {_shell(c)}", file=sys.stderr)
            return rc
    if plan.mode != "inplace":
        marker.write_text(json.dumps(want) + "\n")
    check = "import torch; print(torch.__version__, torch.version.cuda or '-')"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", check], capture_output=True, text=True
    )
    version, _, cuda = out.stdout.strip().partition(" ")
    print(f"setup_env: {venv}: torch {version}, CUDA {cuda}")
    if plan.mode == "install" and plan.torch.startswith("cu") and cuda == "-":
        raise SetupError(f"TORCH={plan.torch}: {venv} got torch {version} with no CUDA")
    if args.stamp:
        Path(args.stamp).touch()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--torch", default="auto")
    ap.add_argument("--venv", default=".venv")
    ap.add_argument("--python", default=sys.executable, help="interpreter for a new venv")
    ap.add_argument("--torch-version", default="2.13.0")
    ap.add_argument("--extras", default="dev,plot,eval")
    ap.add_argument("--wheels", default=None, help="local wheel folder: install offline")
    ap.add_argument("--stamp", default=None, help="file to touch when done")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and commands")
    ap.add_argument("--link", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        if args.link:
            link(args.link, Path(args.venv))
            return 0
        return setup(args)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
