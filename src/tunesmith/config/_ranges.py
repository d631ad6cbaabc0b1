"""Range checks for numeric config keys, declared as data and run before anything is built.

Each ``Range`` names a key path (``batch_size``, ``optimizer.lr``, ``model.lora_rank``), whether
it must be an integer, its bounds and whether ``null`` is allowed. ``range_problems(cfg)``
returns a ``Problem`` for every present key outside its range (``tunesmith validate`` lists
them), ``check_ranges(cfg)`` raises ``ConfigError`` for the first (training recipes call it at
the start of ``recipe_main``; ``tunesmith run`` before the recipe starts). Keys that are absent,
or whose interpolation does not resolve, are left to the code that reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tunesmith.config._errors import ConfigError
from tunesmith.config._signature import Problem

__all__ = ["RANGES", "Range", "check_ranges", "range_problems"]


@dataclass(frozen=True)
class Range:
    """``key`` must be a number (an integer when ``integer``) with ``low <= value <= high``.

    ``low_open`` / ``high_open`` make a bound strict (``0 < lr_scheduler.eta``); ``nullable``
    lets ``null`` mean "off" or "the default". ``meaning`` says what the key does, for the hint.
    """

    key: str
    integer: bool = True
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    meaning: str = ""

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {_num(self.high)}")
        text = f"{kind} {' and '.join(bounds)}" if bounds else kind
        return text + (" (or null)" if self.nullable else "")

    def violation(self, value: Any) -> str | None:
        """Why ``value`` is out of range, or None when it is fine."""
        if value is None:
            return None if self.nullable else "must be set"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be {self.describe()}, got {value!r}"
        if math.isnan(value):
            return f"must be {self.describe()}, got nan"
        if self.integer and not float(value).is_integer():
            return f"must be {self.describe()}, got {value!r}"
        low_bad = self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        )
        high_bad = self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        )
        if low_bad or high_bad:
            return f"must be {self.describe()}, got {value!r}"
        return None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _at_least_1(key: str, meaning: str, nullable: bool = False) -> Range:
    return Range(key, low=1, nullable=nullable, meaning=meaning)


RANGES: tuple[Range, ...] = (
    _at_least_1("epochs", "passes over the data"),
    _at_least_1("batch_size", "rows per step and device"),
    _at_least_1("batch_size_val", "rows per validation step", nullable=True),
    _at_least_1("gradient_accumulation_steps", "micro-batches per optimizer step"),
    _at_least_1("max_steps_per_epoch", "optimizer steps per epoch; null = all", nullable=True),
    _at_least_1("log_every_n_steps", "steps between metric logs", nullable=True),
    _at_least_1("save_every_n_steps", "steps between mid-epoch saves; null = off", nullable=True),
    _at_least_1("run_val_every_n_steps", "steps between validations; null = off", nullable=True),
    _at_least_1("keep_last_n_checkpoints", "checkpoints kept; null = all", nullable=True),
    Range("num_workers", low=0, nullable=True, meaning="data-loading processes; 0 = in-process"),
    Range("seed", low=0, high=2**32 - 1, nullable=True, meaning="random seed"),
    Range("clip_grad_norm", integer=False, low=0, low_open=True, nullable=True,
          meaning="largest gradient norm; null = no clipping"),
    Range("fake_quant_after_n_steps", low=0, nullable=True, meaning="steps before fake quantization"),
    Range("kd_ratio", integer=False, low=0, high=1, meaning="weight of the distillation loss"),
    Range("optimizer.lr", integer=False, low=0, meaning="learning rate"),
    Range("optimizer.weight_decay", integer=False, low=0, meaning="weight decay"),
    Range("optimizer.momentum", integer=False, low=0, meaning="momentum"),
    Range("optimizer.eps", integer=False, low=0, low_open=True, meaning="epsilon"),
    Range("lr_scheduler.num_warmup_steps", low=0, meaning="warm-up steps"),
    _at_least_1("model.lora_rank", "LoRA rank"),
    Range("model.lora_alpha", integer=False, low=0, low_open=True, meaning="LoRA scale"),
    Range("model.lora_dropout", integer=False, low=0, high=1, high_open=True,
          meaning="LoRA dropout probability"),
    _at_least_1("tokenizer.max_seq_len", "tokens per sequence", nullable=True),
    _at_least_1("max_new_tokens", "tokens to generate"),
    Range("temperature", integer=False, low=0, meaning="sampling temperature; 0 = greedy"),
    _at_least_1("top_k", "tokens sampled from", nullable=True),
    Range("top_p", integer=False, low=0, high=1, low_open=True, nullable=True,
          meaning="nucleus sampling mass"),
    _at_least_1("limit", "examples per task", nullable=True),
    Range("num_fewshot", low=0, nullable=True, meaning="few-shot examples"),
    _at_least_1("max_seq_length", "tokens per evaluated sequence", nullable=True),
)  # fmt: skip
"""Every range-checked key (absent keys are not checked)."""


def _lookup(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """``(present, value)`` for a dotted key; an unresolvable value counts as absent."""
    node: Any = cfg
    parts = key.split(".")
    try:
        for part in parts[:-1]:
            if not isinstance(node, DictConfig) or part not in node:
                return False, None
            node = node[part]
        if not isinstance(node, DictConfig) or parts[-1] not in node:
            return False, None
        value = node[parts[-1]]
    except OmegaConfBaseException:
        return False, None
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=False)
    return True, value


def range_problems(cfg: DictConfig) -> list[Problem]:
    """A ``Problem`` for each present key of ``RANGES`` whose value is out of range."""
    problems: list[Problem] = []
    for rule in RANGES:
        present, value = _lookup(cfg, rule.key)
        if not present:
            continue
        why = rule.violation(value)
        if why is not None:
            what = f" ({rule.meaning})" if rule.meaning else ""
            problems.append(Problem(rule.key, f"{why}{what}; set {rule.key} to {rule.describe()}"))
    return problems


def check_ranges(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first key out of range: ``<key> must be ... (...): set ...``."""
    problems = range_problems(cfg)
    if problems:
        raise ConfigError(str(problems[0]), key=problems[0].key)
