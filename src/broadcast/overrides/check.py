"""The startup check every override makes: the methods it overrides or calls still exist, with
the parameters it was written against, and the attributes it reads are there."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any


def signatures(
    cls: type,
    methods: Mapping[str, list[str]],
    attributes: Iterable[str] = (),
    instance: Any = None,
) -> str | None:
    """What differs from the expected ``methods`` (name: parameter names) and ``attributes``
    (looked up on ``instance``) of ``cls``; ``None`` when nothing does."""
    for name, parameters in methods.items():
        method = getattr(cls, name, None)
        if method is None:
            return f"{cls.__module__}.{cls.__qualname__}.{name} is gone"
        if list(inspect.signature(method).parameters) != parameters:
            return f"{cls.__module__}.{cls.__qualname__}.{name} takes other arguments"
    for name in attributes:
        if not hasattr(instance, name):
            return f"{cls.__module__}.{cls.__qualname__} has no {name}"
    return None
