"""Resolve ``_component_`` dotted paths to Python objects, with torchtune compatibility.

``torchtune.X`` resolves to ``tunesmith.X``; a few torchtune packages live elsewhere in
tunesmith and are mapped by :data:`TORCHTUNE_ALIASES` (tried first, longest prefix wins,
then the plain rename). Unknown names fail with close-match suggestions.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import re
from typing import Any

from tunesmith.config._errors import ConfigError

__all__ = ["TORCHTUNE_ALIASES", "candidate_paths", "resolve_component"]

TORCHTUNE_ALIASES: tuple[tuple[str, str], ...] = (
    ("torchtune.modules.transforms.tokenizers.", "tunesmith.data.tokenizers."),
    ("torchtune.modules.tokenizers.", "tunesmith.data.tokenizers."),
    (
        "torchtune.modules.transforms.VisionCrossAttentionMask",
        "tunesmith.data.VisionCrossAttentionMask",
    ),
    ("torchtune.training.checkpointing.", "tunesmith.training."),
    ("torchtune.modules.transforms.vision_utils.", "tunesmith.data._image_transforms."),
    ("torchtune.utils.metric_logging.", "tunesmith.training.metric_logging."),
    # PPO's loss lives with the rest of PPO, not among the preference losses
    ("torchtune.rlhf.loss.PPOLoss", "tunesmith.rlhf.ppo.PPOLoss"),
    ("torchtune.rlhf.loss.ppo.", "tunesmith.rlhf.ppo."),
    ("torchtune.rlhf.rewards.", "tunesmith.rlhf.ppo."),
    ("torchtune.rlhf.sequence_processing.", "tunesmith.rlhf."),
    ("torchtune.rlhf._types.", "tunesmith.rlhf.ppo."),
    ("torchtune.rlhf.", "tunesmith.rlhf."),
    # torchtune's per-family _component_builders modules: the builders are public here
    ("torchtune.models.mistral._component_builders.", "tunesmith.models.mistral."),
    ("torchtune.models.llama2._component_builders.", "tunesmith.models.llama2."),
    ("torchtune.training.pooling.", "tunesmith.rlhf.ppo."),
    (
        "torchtune.training.get_unmasked_sequence_lengths",
        "tunesmith.rlhf.ppo.get_unmasked_sequence_lengths",
    ),
    # torchtune main's dev GRPO losses
    ("torchtune.dev.grpo.loss.", "tunesmith.rlhf.grpo."),
    ("torchtune.dev.rl.linear_grpo_loss.", "tunesmith.rlhf.grpo."),
    # torchtune main's dev/ online-RL pieces: rewards and GSM8K / RL prompt datasets
    ("torchtune.dev.rl.rewards.", "tunesmith.rlhf.rewards."),
    ("torchtune.dev.grpo.rewards.", "tunesmith.rlhf.rewards."),
    ("torchtune.dev.grpo.gsm8k.", "tunesmith.datasets."),
    ("torchtune.dev.rl.gsm8k.", "tunesmith.datasets."),
    ("torchtune.dev.grpo.data.", "tunesmith.datasets."),
    ("torchtune.dev.rl.data.", "tunesmith.datasets."),
    # distillation losses live beside, not inside, tunesmith.modules.loss
    ("torchtune.modules.loss.kd_losses.", "tunesmith.modules.kd_loss."),
    ("torchtune.modules.loss.", "tunesmith.modules.kd_loss."),
    # torchtune's model_fusion package is tunesmith's fusion module
    ("torchtune.modules.model_fusion.", "tunesmith.modules.fusion."),
    ("torchtune.modules.model_fusion.", "tunesmith.modules.early_fusion."),
    ("torchtune.datasets._alpaca.AlpacaToMessages", "tunesmith.data.AlpacaToMessages"),
    # the Hugging Face loader torchtune's dataset files call (tests patch it there)
    ("torchtune.datasets._sft.load_dataset", "datasets.load_dataset"),
    ("torchtune.datasets._preference.load_dataset", "datasets.load_dataset"),
    ("torchtune.datasets._text_completion.load_dataset", "datasets.load_dataset"),
    (
        "torchtune.training.quantization._torchao_0_7_supported",
        "tunesmith.compat._private._torchao_0_7_supported",
    ),
    ("torchtune.training.quantization.", "tunesmith.quantization."),
    # torchtune-private helpers its own modules import (compat._private)
    ("torchtune.utils._device._setup_device", "tunesmith.compat._private._setup_device"),
    (
        "torchtune.utils._device._get_device_type_from_env",
        "tunesmith.compat._private._get_device_type_from_env",
    ),
    (
        "torchtune.training.precision._set_float32_precision",
        "tunesmith.compat._private._set_float32_precision",
    ),
    (
        "torchtune.data._prompt_templates._get_prompt_template",
        "tunesmith.data._prompt_templates.get_prompt_template",
    ),
    (
        "torchtune.utils.get_world_size_and_rank",
        "tunesmith.training.distributed.get_world_size_and_rank",
    ),
    (
        "torchtune.utils._device.get_world_size_and_rank",
        "tunesmith.training.distributed.get_world_size_and_rank",
    ),
    # tensor-parallel plans: one plan per layer type serves every family
    (
        "torchtune.models.llama3.base_llama_tp_plan",
        "tunesmith.training.tensor_parallel.base_llama_tp_plan",
    ),
    (
        "torchtune.models.llama4.decoder_only_tp_plan",
        "tunesmith.training.tensor_parallel.decoder_tp_plan",
    ),
    # Older torchtune configs name the scheduler at its pre-0.3 home.
    (
        "torchtune.modules.get_cosine_schedule_with_warmup",
        "tunesmith.training.lr_schedulers.get_cosine_schedule_with_warmup",
    ),
    ("torchtune.modules.peft.QATLoRALinear", "tunesmith.quantization.QATLoRALinear"),
    # torchao moved its low-bit optimizers out of prototype.
    ("torchao.prototype.low_bit_optim.", "torchao.optim."),
    # ... and its NF4 tensor out of torchao.dtypes (torchtune 0.6.1's code imports the old name)
    ("torchao.dtypes.nf4tensor.", "torchao.quantization.quantize_.workflows.nf4.nf4_tensor."),
    # torchtune 0.6.1's recipe files: their interfaces, a private config helper they import,
    # and torchdata's stateful loader (served only where torchdata is not installed)
    ("torchtune.recipe_interfaces.", "tunesmith.compat.recipe_interfaces."),
    (
        "torchtune.config._utils._get_component_from_path",
        "tunesmith.config._parse.get_component_from_path",
    ),
    ("torchdata.stateful_dataloader.sampler.", "tunesmith.compat.torchdata."),
    ("torchdata.stateful_dataloader.", "tunesmith.compat.torchdata."),
    ("torchtune.", "tunesmith."),
)
OPTIONAL_EXTRAS = {
    "bitsandbytes": "bnb",
    "wandb": "wandb",
    "tensorboard": "tensorboard",
    "comet_ml": "comet",
    "mlflow": "mlflow",
    "lm_eval": "eval",
    "math_verify": "rl",
    "reasoning_gym": "rl",
}
"""Top-level packages of tunesmith's optional extras, for the install hint."""
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def candidate_paths(dotted: str) -> list[str]:
    """The tunesmith paths a (possibly torchtune) dotted name may live at, most specific first."""
    out: list[str] = []
    for prefix, replacement in TORCHTUNE_ALIASES:
        if dotted.startswith(prefix):
            out.append(replacement + dotted[len(prefix) :])
    if dotted.startswith("torchtune.") and dotted.count(".") >= 2:
        out.append("tunesmith." + dotted[len("torchtune.") :])
    return list(dict.fromkeys(out)) or [dotted]


def _public_names(obj: Any) -> list[str]:
    names = {n for n in dir(obj) if not n.startswith("_")}
    for entry in getattr(obj, "__path__", None) or []:
        names.update(m.name for m in pkgutil.iter_modules([entry]) if not m.name.startswith("_"))
    return sorted(names)


def _did_you_mean(name: str, options: list[str], prefix: str) -> str:
    exact = [o for o in options if o.lower() == name.lower()]
    close = list(dict.fromkeys(exact + difflib.get_close_matches(name, options, n=3, cutoff=0.6)))[
        :3
    ]
    if not close:
        lowered = {o.lower(): o for o in options}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3)]
    return f" Did you mean {', '.join(prefix + c for c in close)}?" if close else ""


def _import_user_module(name: str) -> Any:
    """``import_module``; a module that imports ``torchtune`` (a user's torchtune-era dataset or
    model builder) gets tunesmith's compatibility import, installed once, when no real
    torchtune is installed (``tunesmith.compat``; ``TUNESMITH_NO_TORCHTUNE_COMPAT=1`` stops it)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing.split(".")[0] != "torchtune" or name.split(".")[0] == "torchtune":
            raise
        from tunesmith.compat import install_if_needed, installed

        if installed() or not install_if_needed():
            raise
        return importlib.import_module(name)


def _try_resolve(dotted: str) -> tuple[Any, str | None]:
    """``(object, None)`` on success, else ``(None, reason with suggestions)``."""
    parts = dotted.split(".")
    module = None
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            module = _import_user_module(name)
        except ModuleNotFoundError as e:
            missing = e.name or ""
            if missing == name or name.startswith(missing + "."):
                continue
            e.add_note(f"while importing {name} for _component_ {dotted}")
            raise
        break
    if module is None:
        extra = OPTIONAL_EXTRAS.get(parts[0])
        if extra:
            return None, (
                f"'{parts[0]}' is an optional dependency that is not installed; "
                f"install it with pip install 'tunesmith[{extra}]'."
            )
        return None, f"there is no module named '{parts[0]}' (is the package installed?)."
    obj: Any = module
    for j in range(i, len(parts)):
        if not hasattr(obj, parts[j]):
            owner = ".".join(parts[:j])
            hint = _did_you_mean(parts[j], _public_names(obj), owner + ".")
            return None, f"'{owner}' has no '{parts[j]}'.{hint}"
        obj = getattr(obj, parts[j])
    return obj, None


def resolve_component(dotted: str, key: str = "_component_") -> Any:
    """Import the object a ``_component_`` names (``torchtune.*`` is mapped to ``tunesmith.*``).

    Args:
        dotted: a full dotted path such as ``torch.optim.AdamW``.
        key: the config key path the name came from, used in error messages.

    Raises:
        ConfigError: naming ``key``, what is missing, and close matches.
    """
    if not isinstance(dotted, str) or not _DOTTED.match(dotted) or "." not in dotted:
        raise ConfigError(
            f"{key}: {dotted!r} is not a component path; write the full dotted import path of a "
            "function or class, e.g. torch.optim.AdamW",
            key=key,
        )
    candidates = candidate_paths(dotted)
    reasons: list[str] = []
    for candidate in candidates:
        obj, reason = _try_resolve(candidate)
        if reason is None:
            if not callable(obj):
                inside = [n for n in _public_names(obj) if callable(getattr(obj, n, None))]
                hint = _did_you_mean(candidate.rsplit(".", 1)[-1], inside, candidate + ".")
                raise ConfigError(
                    f"{key}: '{dotted}' is a {type(obj).__name__}, not a function or class; "
                    f"name something callable inside it.{hint}",
                    key=key,
                )
            return obj
        reasons.append(reason)
    mapped = ""
    if candidates[0] != dotted:
        mapped = f" (torchtune name, looked up as {' and '.join(candidates)})"
    raise ConfigError(
        f"{key}: cannot resolve _component_ '{dotted}'{mapped}: {reasons[0]}"
        + ("" if "pip install" in reasons[0] else " Fix the dotted path in the config."),
        key=key,
    )
