"""Public modules list their API and nothing else (DESIGN.md §9).

A module's own imports (``torch``, ``math``, ``np``, ...) are attributes of it like any other name;
``__all__`` keeps them out of ``from m import *`` and a module-level ``__dir__`` (PEP 562) keeps
them out of ``dir(m)``, tab completion and the generated docs, so the namespace a user sees is the
API the module documents.
"""

from __future__ import annotations

from typing import Callable, Iterable


def public_dir(names: Iterable[str]) -> Callable[[], list[str]]:
    """A module ``__dir__`` that lists ``names`` (the module's ``__all__``)."""
    listing = sorted(names)
    return lambda: list(listing)
