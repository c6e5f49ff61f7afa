"""What differs between the transformers releases the project supports.

transformers renamed the `past_key_values` argument of models' `forward` and of `generate` to
`cache` (the old name still works and warns); releases before the rename know only the old one.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

RENAMED = 'deprecate_kwarg("past_key_values"'


@functools.cache
def cache_keyword(function: Callable[..., Any]) -> str:
    """The keyword under which `function` (a `forward` or `generate`) takes a KV cache."""
    if "cache" in inspect.signature(function).parameters:
        return "cache"
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return "past_key_values"
    return "cache" if RENAMED in source else "past_key_values"


def with_cache(module: Any, cache: Any, method: str = "forward") -> dict[str, Any]:
    """Keyword arguments handing `cache` to `module.<method>`, under the name it takes."""
    return {cache_keyword(getattr(type(module), method)): cache}
