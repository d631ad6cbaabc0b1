"""The ``torchtune`` import finder: module aliasing through tunesmith's torchtune name table."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from functools import cache
from types import ModuleType
from typing import Any

from tunesmith.compat._torchtune_files import TORCHTUNE_FILES
from tunesmith.config._components import TORCHTUNE_ALIASES

__all__ = [
    "DISABLE_ENV",
    "TorchtuneFinder",
    "install",
    "install_if_needed",
    "installed",
    "real_torchtune_available",
    "tunesmith_modules_for",
    "uninstall",
]

DISABLE_ENV = "TUNESMITH_NO_TORCHTUNE_COMPAT"
"""Set to 1 to stop ``tunesmith run`` and config instantiation from installing the finder."""

_ROOT = "torchtune"


def _module_exists(name: str) -> bool:
    if name in sys.modules:
        return isinstance(sys.modules[name], ModuleType)
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if name == missing or name.startswith(missing + "."):
            return False
        raise
    except ValueError:  # a module in sys.modules with __spec__ None
        return False


@cache
def _table_candidates(fullname: str) -> tuple[str, ...]:
    """Module names ``fullname`` may map to: the plain rename first, then the table's."""
    key = fullname + "."
    out = ["tunesmith" + fullname[len(_ROOT) :]] if _is_torchtune(fullname) else []
    for prefix, replacement in TORCHTUNE_ALIASES:
        if prefix.endswith(".") and key.startswith(prefix) and replacement.endswith("."):
            out.append((replacement + key[len(prefix) :]).rstrip("."))
    return tuple(dict.fromkeys(out))


def tunesmith_modules_for(fullname: str) -> list[str]:
    """The existing tunesmith modules that torchtune module ``fullname`` maps to, in lookup order.

    >>> tunesmith_modules_for("torchtune.utils.metric_logging")
    ['tunesmith.training.metric_logging']
    """
    return [name for name in _table_candidates(fullname) if _module_exists(name)]


def _attribute_aliases(fullname: str) -> dict[str, str]:
    """Table entries naming one object directly under ``fullname`` (``torchtune.rlhf.loss.PPOLoss``)."""
    out: dict[str, str] = {}
    for prefix, replacement in TORCHTUNE_ALIASES:
        parent, _, attr = prefix.rpartition(".")
        if not prefix.endswith(".") and parent == fullname and attr not in out:
            out[attr] = replacement
    return out


def _is_table_parent(fullname: str) -> bool:
    """``torchtune.dev``, ``torchtune.dev.grpo``: packages above a table prefix."""
    return any(prefix.startswith(fullname + ".") for prefix, _ in TORCHTUNE_ALIASES)


def _import_object(dotted: str) -> Any:
    module_name, _, attr = dotted.rpartition(".")
    if _module_exists(dotted):
        return importlib.import_module(dotted)
    return getattr(importlib.import_module(module_name), attr)


def _is_torchtune(fullname: str) -> bool:
    return fullname == _ROOT or fullname.startswith(_ROOT + ".")


def _moved_third_party(fullname: str, path: Any) -> bool:
    """A module the table moves inside another package (``torchao.dtypes.nf4tensor``, moved in
    later torchao releases), served only where the installed package lacks the old name."""
    key = fullname + "."
    if not any(p.endswith(".") and key.startswith(p) for p, _ in TORCHTUNE_ALIASES):
        return False
    if importlib.machinery.PathFinder.find_spec(fullname, path) is not None:
        return False
    return bool(tunesmith_modules_for(fullname))


_ABSENT_PACKAGES = ("torchdata",)
"""torchtune dependencies whose table modules are served only where the package is not
installed at all (torchdata's ``stateful_dataloader``, imported by torchtune's recipe files)."""


def _absent_package(fullname: str, path: Any) -> bool:
    """``fullname`` is (a parent of) a table prefix of a package that no other finder has."""
    if not (_is_table_parent(fullname) or _moved_third_party(fullname, path)):
        return False
    root = fullname.split(".")[0]
    loaded = sys.modules.get(root)
    if loaded is not None:
        return isinstance(loaded, TorchtuneView)
    for finder in sys.meta_path:
        if isinstance(finder, TorchtuneFinder) or not hasattr(finder, "find_spec"):
            continue
        try:
            if finder.find_spec(root, None) is not None:
                return False
        except (ImportError, ValueError):
            continue
    return True


class TorchtuneView(ModuleType):
    """A torchtune module that is not one tunesmith module: names are looked up in
    ``modules`` (then the table's per-object entries, then ``fallback``, the nearest mapped
    ancestor's modules), and cached on first use."""

    def __init__(
        self, name: str, modules: list[str], extras: dict[str, str], fallback: list[str]
    ) -> None:
        super().__init__(name, f"tunesmith compatibility view of {name}")
        self.__path__: list[str] = []
        self._tunesmith_modules = modules
        self._tunesmith_extras = extras
        self._tunesmith_fallback = fallback

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr.startswith("_tunesmith_"):
            raise AttributeError(attr)
        found, value = self._lookup(attr)
        if not found:
            looked = ", ".join(self._tunesmith_modules + self._tunesmith_fallback) or "nothing"
            raise AttributeError(
                f"module {self.__name__!r} has no attribute {attr!r} in tunesmith's torchtune "
                f"compatibility import (looked in {looked})"
            )
        setattr(self, attr, value)
        return value

    def __setattr__(self, attr: str, value: Any) -> None:
        """Set on the view; a name the table maps to another module's attribute
        (``torchtune.datasets._sft.load_dataset`` -> ``datasets.load_dataset``) is set there
        too, so ``mock.patch`` of the torchtune name reaches the code that calls it; deleting
        or setting the original back restores that module."""
        super().__setattr__(attr, value)
        target = self.__dict__.get("_tunesmith_extras", {}).get(attr)
        if target is None or attr.startswith("_tunesmith_"):
            return
        module_name, _, name = target.rpartition(".")
        module = sys.modules.get(module_name)
        if module is None or isinstance(getattr(module, name, None), ModuleType):
            return
        patched = self.__dict__.setdefault("_tunesmith_patched", {})
        current = getattr(module, name, None)
        if attr not in patched:
            if value is current:
                return  # the lookup cache, not a patch
            patched[attr] = current
        elif value is patched[attr]:
            del patched[attr]
        setattr(module, name, value)

    def __delattr__(self, attr: str) -> None:
        super().__delattr__(attr)
        patched = self.__dict__.get("_tunesmith_patched", {})
        if attr in patched:
            module_name, _, name = self._tunesmith_extras[attr].rpartition(".")
            setattr(sys.modules[module_name], name, patched.pop(attr))

    def _lookup(self, attr: str) -> tuple[bool, Any]:
        for name in self._tunesmith_modules:
            module = importlib.import_module(name)
            if hasattr(module, attr):
                return True, getattr(module, attr)
        if attr in self._tunesmith_extras:
            return True, _import_object(self._tunesmith_extras[attr])
        sub = f"{self.__name__}.{attr}"
        if tunesmith_modules_for(sub):
            return True, importlib.import_module(sub)
        for name in self._tunesmith_fallback:
            module = importlib.import_module(name)
            if hasattr(module, attr):
                return True, getattr(module, attr)
        parent, _, leaf = self.__name__.rpartition(".")
        if leaf.startswith("_"):  # a private file also holds its package's moved names
            moved = _attribute_aliases(parent).get(attr)  # (torchtune.utils._device's
            if moved is not None:  # get_world_size_and_rank)
                return True, _import_object(moved)
        return False, None

    def __dir__(self) -> list[str]:
        names = set(super().__dir__()) | set(self._tunesmith_extras)
        for name in self._tunesmith_modules + self._tunesmith_fallback:
            names.update(n for n in dir(importlib.import_module(name)) if not n.startswith("__"))
        return sorted(names)


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        name = spec.name
        modules = tunesmith_modules_for(name)
        extras = _attribute_aliases(name)
        parent = name.rpartition(".")[0]
        private = name.rpartition(".")[2].startswith("_")
        if private and _is_torchtune(name):
            # torchtune's private files (torchtune.data._messages) hold names that tunesmith
            # keeps in other files of the same package: look there too
            return self._child_view(name, modules, extras, tunesmith_modules_for(parent))
        target = importlib.import_module(modules[0]) if len(modules) == 1 else None
        if target is not None and not extras and hasattr(target, "__path__"):
            # torchtune.X *is* tunesmith.X for packages; a plain module is served by a view
            # (torchtune's package may have children, and a module must not get a __path__)
            module = target
            # the import system sets __spec__ on what create_module returns; exec_module puts
            # tunesmith's back (pickle, reload and relative imports read it)
            self._specs[id(module)] = module.__spec__
            return module
        fallback: list[str] = []
        if not modules:
            fallback = tunesmith_modules_for(parent)
        return self._child_view(name, modules, extras, fallback)

    @staticmethod
    def _child_view(
        name: str, modules: list[str], extras: dict[str, str], fallback: list[str]
    ) -> TorchtuneView:
        """A view; when its parent is a tunesmith module itself, the parent's entry in
        ``sys.modules`` becomes a view of it first. The import system then sets the child on
        that view (it re-reads ``sys.modules[parent]`` after loading), never on tunesmith's
        module: ``torchtune.modules.transforms.vision_utils.get_canvas_best_fit`` (a file in
        torchtune) must not replace the function of that name in tunesmith. A third-party
        parent (``torchao.dtypes`` of a moved ``torchao.dtypes.nf4tensor``) stays itself: a
        view of it would look its names up in itself."""
        parent = name.rpartition(".")[0]
        loaded = sys.modules.get(parent)
        if (
            loaded is not None
            and not isinstance(loaded, TorchtuneView)
            and loaded.__name__ != parent
        ):
            sys.modules[parent] = TorchtuneView(
                parent, [loaded.__name__], _attribute_aliases(parent), []
            )
        return TorchtuneView(name, modules, extras, fallback)

    def __init__(self) -> None:
        self._specs: dict[int, Any] = {}

    def exec_module(self, module: ModuleType) -> None:
        if id(module) in self._specs:
            module.__spec__ = self._specs.pop(id(module))


class TorchtuneFinder(importlib.abc.MetaPathFinder):
    """Answers ``torchtune`` and ``torchtune.*`` imports from tunesmith (see the package doc)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if not _is_torchtune(fullname):
            if fullname.startswith("torchao.") and _moved_third_party(fullname, path):
                return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)
            if fullname.split(".")[0] in _ABSENT_PACKAGES and _absent_package(fullname, path):
                return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)
            return None
        if not self._servable(fullname):
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)

    @staticmethod
    def _servable(fullname: str) -> bool:
        if fullname == _ROOT or tunesmith_modules_for(fullname) or _attribute_aliases(fullname):
            return True
        if _is_table_parent(fullname):
            return True
        # a torchtune file with no tunesmith module of its own, directly in a mapped package
        # (torchtune.modules.peft.lora, torchtune.data._messages); one level only, so
        # `from torchtune.x._file import Missing` is an ImportError, not a module
        parent, _, leaf = fullname.rpartition(".")
        if leaf[:1].isupper():  # `from torchtune.modules.loss import ForwardKLLoss`: a class
            return False
        if parent in TORCHTUNE_FILES:  # a function of a torchtune file, not a submodule
            return False
        return parent != _ROOT and bool(tunesmith_modules_for(parent))


def installed() -> bool:
    """Whether the finder is on ``sys.meta_path``."""
    return any(isinstance(f, TorchtuneFinder) for f in sys.meta_path)


def real_torchtune_available() -> bool:
    """Whether a real ``torchtune`` is imported or importable by the other finders."""
    loaded = sys.modules.get(_ROOT)
    if loaded is not None and not _served(loaded):
        return True
    for finder in sys.meta_path:
        if isinstance(finder, TorchtuneFinder) or not hasattr(finder, "find_spec"):
            continue
        try:
            if finder.find_spec(_ROOT, None) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def _served(module: ModuleType) -> bool:
    return isinstance(module, TorchtuneView) or module.__name__.startswith("tunesmith")


def install() -> bool:
    """Serve ``import torchtune`` from tunesmith in this process.

    Returns True when the finder is (now) installed, False when a real torchtune is importable
    (it is never shadowed). The finder goes first on ``sys.meta_path``: an aliased package such
    as ``torchtune.data`` carries tunesmith's ``__path__``, and the path finder would otherwise
    load a second copy of ``tunesmith/data/_messages.py`` as ``torchtune.data._messages``.
    """
    if installed():
        return True
    if real_torchtune_available():
        return False
    sys.meta_path.insert(0, TorchtuneFinder())
    return True


def install_if_needed() -> bool:
    """:func:`install` unless ``TUNESMITH_NO_TORCHTUNE_COMPAT=1``; what ``tunesmith run`` calls."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes"):
        return False
    return install()


def uninstall() -> None:
    """Remove the finder and every ``torchtune`` module it served."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TorchtuneFinder)]
    for name in [n for n in sys.modules if n == _ROOT or n.startswith(_ROOT + ".")]:
        if _served(sys.modules[name]):
            del sys.modules[name]
    for name in [n for n in sys.modules if n.split(".")[0] in _ABSENT_PACKAGES]:
        if isinstance(sys.modules[name], TorchtuneView):
            del sys.modules[name]
