"""The one place that knows how the installed transformers names things.

Releases inside the declared range differ in a few names, and every difference is resolved
here, by reading the installed signatures once (never by comparing version strings):

* the KV-cache keyword of decoder layers, models and mask builders: ``past_key_values``
  up to 5.23, ``cache`` from 5.24 (whose deprecation shim silently drops
  ``past_key_values`` when a caller also passes ``cache=None``);
* the cache field of the model outputs (``BaseModelOutputWithPast.past_key_values`` /
  ``.cache``).

Everything else in the project calls these helpers instead of spelling either name.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from typing import Any, Dict, MutableMapping, Optional

import transformers
from transformers.modeling_outputs import BaseModelOutputWithPast

from llava.errors import UnsupportedModelError, UnsupportedUsageError

TRANSFORMERS_VERSION = transformers.__version__
CACHE_NAMES = ("cache", "past_key_values")  # newest first


def _cache_name_of(params, owner: str) -> str:
    for name in CACHE_NAMES:
        if name in params:
            return name
    raise UnsupportedModelError(
        f"{owner} takes neither of {list(CACHE_NAMES)} with transformers {TRANSFORMERS_VERSION}; "
        "install a release in llava-aim's tested range (pip install -c constraints/lock.txt ...)"
    )


@functools.lru_cache(maxsize=None)
def cache_keyword(cls: type) -> str:
    """The KV-cache keyword of ``cls.forward`` (a decoder layer or model class)."""
    params = inspect.signature(cls.forward).parameters  # follows the deprecation wrapper
    return _cache_name_of(params, cls.__name__)


def cache_kwargs(module, cache) -> Dict[str, Any]:
    """``{keyword: cache}`` for calling ``module`` (a decoder layer or a model)."""
    return {cache_keyword(type(module)): cache}


def pop_cache(kwargs: MutableMapping[str, Any]):
    """Take the cache out of a caller's keyword arguments under either name.

    Callers of a patched forward may use the old or the new spelling; both at once, naming
    two different caches, is ambiguous and refused rather than guessed.
    """
    found = [kwargs.pop(name) for name in CACHE_NAMES if name in kwargs]
    found = [c for c in found if c is not None]
    if len(found) == 2 and found[0] is not found[1]:
        raise UnsupportedUsageError("two different KV caches were passed (cache= and past_key_values=); pass one")
    return found[0] if found else None


def peek_cache(kwargs: MutableMapping[str, Any]):
    """The cache in a caller's keyword arguments under either name, left in place."""
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


@functools.lru_cache(maxsize=None)
def _output_cache_field() -> str:
    fields = {f.name for f in dataclasses.fields(BaseModelOutputWithPast)}
    return _cache_name_of(fields, "BaseModelOutputWithPast")


def model_output(last_hidden_state, cache) -> BaseModelOutputWithPast:
    """A decoder's output holding ``cache`` under the installed field name."""
    return BaseModelOutputWithPast(last_hidden_state=last_hidden_state, **{_output_cache_field(): cache})


def output_cache(output) -> Optional[Any]:
    """The KV cache of a model output, whatever the installed field name."""
    return getattr(output, _output_cache_field(), None)


@functools.lru_cache(maxsize=None)
def _from_pretrained_takes_use_kernels() -> bool:
    """Whether the installed ``PreTrainedModel.from_pretrained`` reads ``use_kernels``.

    It pops the keyword from ``**kwargs``, so the signature does not show it; its default is
    what matters: 5.25 turned it on (``None`` = "on when the kernels package is usable"), while
    up to 5.24 it was an opt-in ``False`` that is best not passed at all (nothing changes).
    """
    from transformers import modeling_utils

    try:
        source = inspect.getsource(modeling_utils.PreTrainedModel.from_pretrained)
    except (OSError, TypeError):  # no source shipped: leave the release's own default alone
        return False
    return re.search(r"""pop\(\s*["']use_kernels["']\s*,\s*None\s*\)""", source) is not None


def kernel_kwargs(use_kernels: bool) -> Dict[str, Any]:
    """The ``from_pretrained`` keywords that choose the stock layers (``use_kernels=False``) or
    the hub kernels (``True``) on a release that swaps kernels in by default; ``{}`` on
    releases that never do (passing nothing keeps their behaviour and their errors).

    The project's default is False: kernelized RMSNorm / rotary change the numerics against the
    stock path, and an offline node cannot fetch them (5.25 also refuses every load when the
    ``kernels`` package is missing unless this is False)."""
    return {"use_kernels": bool(use_kernels)} if _from_pretrained_takes_use_kernels() else {}
