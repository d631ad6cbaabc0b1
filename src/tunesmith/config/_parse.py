"""torchtune's recipe entry points: ``@config.parse``, ``TuneRecipeArgumentParser``, ``log_config``,
``validate``.

A torchtune recipe file ends with::

    @config.parse
    def recipe_main(cfg: DictConfig) -> None: ...

    if __name__ == "__main__":
        sys.exit(recipe_main())

:func:`parse` reads ``--config <path> key=value ...`` from ``sys.argv`` when the function is
called without a config (``python recipe.py --config x.yaml``), with torchtune's parser
(:class:`TuneRecipeArgumentParser`) and tunesmith's overrides (bundled config names,
``~key`` to delete a key, one-line errors). Called with a config
(``tunesmith run recipe.py --config ...`` parses the command line itself and passes it), the
decorated function runs on that config unchanged.

Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunesmith.config._errors import ConfigError

__all__ = [
    "TuneRecipeArgumentParser",
    "get_component_from_path",
    "log_config",
    "parse",
    "validate",
]


class TuneRecipeArgumentParser(argparse.ArgumentParser):
    """torchtune's recipe argument parser: ``--config`` names a YAML file (or a bundled config)
    whose top-level keys become the parser's defaults; everything else (``key=value``
    overrides) is returned unparsed by :meth:`parse_known_args`.

    Raises:
        ValueError: from :meth:`parse_known_args`, for a ``--flag`` other than ``--config``, or
            a config file that has a top-level ``config`` key.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--config",
            type=str,
            required=True,
            help="the YAML config: a file path or a bundled config name",
        )

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """``(namespace with the YAML's keys and no ``config``, the remaining arguments)``;
        interpolations (``${...}``) are kept unresolved."""
        parsed, rest = super().parse_known_args(args, namespace)
        flags = [a for a in rest if a.startswith("--")]
        if flags:
            raise ValueError(
                f"Additional flag arguments not supported: {flags}; a recipe takes "
                "--config <path> and then key=value overrides"
            )
        loaded = OmegaConf.load(_config_file(parsed.config))
        if not isinstance(loaded, DictConfig):
            raise ValueError(f"{parsed.config}: the top level of a config must be a mapping")
        if "config" in loaded:
            raise ValueError(f"{parsed.config}: 'config' cannot be a key of a config file")
        self.set_defaults(**OmegaConf.to_container(loaded, resolve=False))
        parsed, rest = super().parse_known_args(args, namespace)
        del parsed.config
        return parsed, rest


def _config_file(name: str) -> str:
    """A path as given, or the file of a bundled config name (``llama3_2/1B_lora``)."""
    from pathlib import Path

    from tunesmith.config._bundled import resolve_config_path

    if Path(name).expanduser().is_file():
        return str(Path(name).expanduser())
    try:
        return str(resolve_config_path(name))
    except ConfigError:
        return name  # OmegaConf's own error names the missing file


def parse(recipe_main: Callable[[DictConfig], Any]) -> Callable[..., Any]:
    """Decorate a recipe's ``recipe_main(cfg)`` so that it builds ``cfg`` from the command line.

    ``recipe_main()`` (no arguments) parses ``sys.argv[1:]`` with
    :class:`TuneRecipeArgumentParser` (``--config <path|name>`` then ``key=value`` /
    ``+key=value`` / ``~key``, applied as ``tunesmith.config.apply_overrides`` does) and exits
    with the function's return value, as torchtune's decorator does; a mistake on the command
    line is one ``error:`` line and exit code 2. ``recipe_main(cfg)`` (what ``tunesmith run``
    calls) runs on the given config and returns the function's result.
    """

    @functools.wraps(recipe_main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return recipe_main(*args, **kwargs)
        import yaml

        from tunesmith.config._errors import one_line
        from tunesmith.config._overrides import apply_overrides
        from tunesmith.utils._logging import configure_logging

        parser = TuneRecipeArgumentParser(
            description=recipe_main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        try:
            yaml_args, cli_args = parser.parse_known_args()
            cfg = apply_overrides(OmegaConf.create(vars(yaml_args)), cli_args)
            configure_logging(cfg.get("log_level", None))
        except (ConfigError, ValueError, OSError, yaml.YAMLError) as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            raise SystemExit(2) from None
        sys.exit(recipe_main(cfg))

    return wrapper


def log_config(recipe_name: str, cfg: DictConfig) -> None:
    """Log ``cfg`` (interpolations resolved, keys sorted, as YAML) on rank 0, as torchtune does."""
    from tunesmith.utils._logging import get_logger, log_rank_zero

    text = OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True)
    log_rank_zero(
        get_logger("tunesmith.config"), f"Running {recipe_name} with resolved config:\n\n{text}"
    )


def get_component_from_path(path: str) -> Any:
    """The object a dotted path names (a module, class, function or constant), importing as
    needed; ``torchtune.X`` names resolve through the same table as ``_component_`` paths.
    torchtune's private ``config._utils._get_component_from_path``.

    Raises:
        ValueError: for an empty or relative path.
        ConfigError: (a ValueError) when nothing is found at the path, with close matches.
    """
    from tunesmith.config._components import _try_resolve, candidate_paths

    if not isinstance(path, str) or not path:
        raise ValueError("get_component_from_path: empty path")
    if path.startswith(".") or path.endswith(".") or ".." in path:
        raise ValueError(f"get_component_from_path: {path!r} is not an absolute dotted path")
    reasons: list[str] = []
    for candidate in candidate_paths(path):
        obj, reason = _try_resolve(candidate)
        if reason is None:
            return obj
        reasons.append(reason)
    raise ConfigError(f"cannot find '{path}': {reasons[0]}")


def validate(cfg: DictConfig) -> None:
    """torchtune's ``config.validate``: every top-level ``_component_`` node's arguments bind
    to its signature (arguments a recipe passes positionally, such as a dataset's tokenizer or
    an optimizer's parameters, may be missing). ``tunesmith validate`` checks more (nested
    components, the keys each recipe supplies, value ranges).

    Raises:
        ConfigError: listing each component that does not bind; ``.errors`` holds one
            ``TypeError`` per node (``"<name> got an unexpected keyword argument 'x'"``).
    """
    import inspect

    from tunesmith.config._components import resolve_component

    errors: list[TypeError] = []
    for key, node in cfg.items():
        if not (isinstance(node, DictConfig) and "_component_" in node):
            continue
        component = resolve_component(node._component_, key=f"{key}._component_")
        kwargs = {k: v for k, v in node.items() if k != "_component_"}
        try:
            signature = inspect.signature(component)
        except (TypeError, ValueError):  # a builtin without a signature: nothing to check
            continue
        try:
            signature.bind_partial(**kwargs)
        except TypeError as e:
            errors.append(TypeError(f"{getattr(component, '__name__', key)} {e}"))
    if errors:
        error = ConfigError("config does not validate: " + "; ".join(map(str, errors)))
        error.errors = errors  # type: ignore[attr-defined]
        raise error
