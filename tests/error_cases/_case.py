"""The shape of one bad-input case in the error table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ErrorCase:
    """One kind of bad input and the one-line message it must get.

    ``build(tmp)`` writes whatever the case needs under the empty folder ``tmp`` (a tiny
    model, a config, a damaged file, an earlier run's output...) and returns the
    ``tunesmith`` arguments to run (without the program name), e.g.
    ``["run", "finetune", "--config", str(tmp / "cfg.yaml"), "batch_size=-1"]``.
    The command runs with ``tmp`` as its working directory. ``expect`` is a regular
    expression the single ``error: ...`` line must match (``re.search``). ``watch`` is the
    folder (relative to ``tmp``) whose contents must be byte-identical before and after
    (absent before means it must still be absent or empty after). ``env`` adds environment
    variables. ``subprocess=True`` runs the command in a fresh ``python -m tunesmith`` process
    (for cases about imports, the environment, torchrun or signals); the others run in the
    test's process through ``tunesmith.cli.main.main``, which is much faster.
    """

    kind: str
    category: str  # "config" | "cli" | "data" | "checkpoint" | "environment"
    build: Callable[[Path], list[str]]
    expect: str
    watch: str = "out"
    env: dict[str, str] = field(default_factory=dict)
    subprocess: bool = False
