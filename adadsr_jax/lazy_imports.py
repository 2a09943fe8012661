"""Package attributes imported on first use (PEP 562), so that a command line can check its arguments
and report a wrong path in well under a second: importing jax, flax and orbax takes ~4 s on 2 cores."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any


def lazy_exports(
    namespace: MutableMapping[str, Any], exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(__getattr__, __dir__) for a package whose public names live in submodules.

    namespace: the package's globals(); exports: {module path: names it provides}. A name is imported
    from its module when first read and then kept in the package like an eager import."""
    origin = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in origin:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = namespace[name] = getattr(importlib.import_module(origin[name]), name)
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(origin))

    return __getattr__, __dir__
