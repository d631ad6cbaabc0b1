"""tunesmith.config: YAML configs, command-line overrides and ``_component_`` instantiation.

Importing this package is cheap (no torch): the CLI uses it on its fast paths.
"""

from tunesmith.config._bundled import (
    CONFIGS_DIR,
    BundledConfig,
    bundled_configs,
    read_recipe_header,
    resolve_config_path,
)
from tunesmith.config._components import TORCHTUNE_ALIASES, candidate_paths, resolve_component
from tunesmith.config._errors import ConfigError, MissingDependencyError, UserError
from tunesmith.config._instantiate import instantiate
from tunesmith.config._loader import load_config, parse_recipe_args, split_recipe_args
from tunesmith.config._overrides import apply_overrides, parse_override, parse_value
from tunesmith.config._parse import TuneRecipeArgumentParser, log_config, parse, validate
from tunesmith.config._signature import Problem
from tunesmith.config._validate import validate_config

__all__ = [
    "CONFIGS_DIR",
    "TORCHTUNE_ALIASES",
    "BundledConfig",
    "ConfigError",
    "MissingDependencyError",
    "Problem",
    "TuneRecipeArgumentParser",
    "UserError",
    "apply_overrides",
    "bundled_configs",
    "candidate_paths",
    "instantiate",
    "load_config",
    "log_config",
    "parse",
    "parse_override",
    "parse_recipe_args",
    "parse_value",
    "read_recipe_header",
    "resolve_component",
    "resolve_config_path",
    "split_recipe_args",
    "validate",
    "validate_config",
]
