"""Register our model type with ``transformers``' Auto classes without importing ``transformers``.

``import gated_attention`` must stay light (the CLI's ``--help`` and the trainer do not need
``transformers``), yet ``AutoConfig`` / ``AutoModelForCausalLM`` / ``pipeline`` must know
``model_type = "gated_attention"`` as soon as a program that imported us uses them. So this
module installs an import hook: once ``transformers``' Auto registries are loaded
(``transformers.models.auto.configuration_auto`` or ``.modeling_auto``) and no
``transformers`` module is still being initialised -- checked each time a ``transformers``
module finishes loading, so it happens when the outermost such import completes --
``gated_attention.hf`` is imported, which registers the classes through ``transformers``' own
``register`` functions. A program that never loads the Auto classes (the trainer, which only
uses a tokenizer class) never pays for it. If the registries are already loaded, :func:`install`
registers at once. The hook removes itself after registering.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

AUTO_REGISTRIES = (
    "transformers.models.auto.configuration_auto",
    "transformers.models.auto.modeling_auto",
)
"""Modules holding the Auto registries; once one is loaded, registering is due."""


def _initialising(name: str) -> bool:
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and bool(getattr(spec, "_initializing", False))


_loading = 0
"""``transformers`` modules being executed by :class:`_Loader` now (nested imports)."""


def _ready() -> bool:
    """An Auto registry is loaded and no ``transformers`` module is mid-import (importing
    ``gated_attention.hf`` then only meets complete modules)."""
    if _loading or not any(name in sys.modules for name in AUTO_REGISTRIES):
        return False
    return not any(_initialising(name) for name in ("transformers", *AUTO_REGISTRIES))


def register() -> bool:
    """Import ``gated_attention.hf`` (which registers the Auto classes) if the Auto registries
    are loaded and ``transformers`` is in a state to be imported from; True once registered."""
    if "gated_attention.hf" in sys.modules:
        _Finder.uninstall()
        return True
    if not _ready():
        return False
    _Finder.uninstall()
    importlib.import_module("gated_attention.hf")
    return True


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then :func:`register`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        global _loading
        _loading += 1
        try:
            self.loader.exec_module(module)
        finally:
            _loading -= 1
        spec = module.__spec__
        # importlib clears this flag only after exec_module returns; the module is complete.
        if spec is not None:
            spec._initializing = False  # type: ignore[attr-defined]
        register()

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the real one
        return getattr(self.loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of every ``transformers`` module (found by the other finders) in
    :class:`_Loader`, until registered."""

    _installed: _Finder | None = None

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("transformers."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None

    @classmethod
    def install(cls) -> None:
        if cls._installed is None:
            cls._installed = cls()
            sys.meta_path.insert(0, cls._installed)

    @classmethod
    def uninstall(cls) -> None:
        if cls._installed is not None:
            if cls._installed in sys.meta_path:
                sys.meta_path.remove(cls._installed)
            cls._installed = None


def install() -> None:
    """Register now if ``transformers``' Auto registries are loaded, else when they load."""
    if not register():
        _Finder.install()
