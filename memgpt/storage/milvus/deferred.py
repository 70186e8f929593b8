"""pymilvus imported without pandas and requests (~0.25 CPU s of every command that opens Milvus).

pymilvus's package ``__init__`` imports its ORM layer, whose modules bind pandas names at import time and use
them only inside functions that memgpt never calls: ``isinstance(data, pd.DataFrame)`` checks on ORM inserts
(memgpt passes lists of dicts to ``MilvusClient``), ``pd.DataFrame`` in annotations (evaluated when a function
is defined), and five functions of ``pandas.api.types`` that infer a column's type from a DataFrame or a
filter template's values (memgpt writes its filters out: Milvus Lite has no templates). Python's own lazy
import (``importlib.util.LazyLoader``) does not help here: both the annotations and ``from pandas.api.types
import is_list_like`` read an attribute while pymilvus imports, which makes a lazy module load at once.

So while pymilvus is imported, and only then, ``pandas`` and ``pandas.api.types`` in ``sys.modules`` are
stand-ins (:class:`_StandIn`), and they are taken out again afterwards: whoever imports pandas later gets
the real one. pymilvus's modules keep the stand-ins, which resolve every name to the real pandas when used
(importing it then), except ``DataFrame`` while pandas is not imported: no object can be a DataFrame then,
and a class nothing is an instance of answers pymilvus's ``isinstance`` checks the same. Once anything has
imported pandas, ``pd.DataFrame`` is the real class, so an ORM insert of a DataFrame works as before
(tests/test_startup.py checks that, and that memgpt's own calls never import pandas).

requests (~0.06 s with urllib3 and charset_normalizer) gets a stand-in the same way: pymilvus imports it for
the topology of Zilliz's global clusters and reads it only when it fetches one, which memgpt never does. (A lazy
module would not do either: on Python 3.11 an ``import`` statement reads its ``__spec__``, which loads it.)
So does dateutil (~0.01-0.02 s), whose ``isoparse`` pymilvus binds at import and calls only to check a
timestamp string a caller gives it: the name is a function that imports dateutil when called.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# What pymilvus's modules read from pandas while they are imported (pymilvus 3.0: orm/schema.py, orm/types.py,
# orm/collection.py, orm/partition.py, orm/prepare.py). A name not listed here imports pandas at once.
_TYPES_NAMES = frozenset({"infer_dtype", "is_array_like", "is_float", "is_list_like", "is_scalar"})
_STANDING_IN = ("pandas", "pandas.api.types", "requests", "dateutil", "dateutil.parser")
_lock = threading.Lock()


class _NotImported:
    """``pandas.DataFrame`` while pandas is not imported: nothing is an instance of it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("pandas is not imported, so there is no DataFrame to make")


def _real_pandas_imported() -> bool:
    found = sys.modules.get("pandas")
    return found is not None and not isinstance(found, _StandIn)


def _real(module: str) -> types.ModuleType:
    """The real ``module``, imported now if it is not yet (the stand-ins leave ``sys.modules`` first)."""
    package = module.partition(".")[0]
    with _lock:
        for name in _STANDING_IN:
            if name.partition(".")[0] == package and isinstance(sys.modules.get(name), _StandIn):
                del sys.modules[name]
    return importlib.import_module(module)


def _deferred(module: str, name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(_real(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


class _StandIn(types.ModuleType):
    """``pandas``, ``pandas.api.types``, ``requests`` or dateutil as pymilvus's modules hold them: see the
    module's docstring."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # the import system's questions (__path__, __spec__...): a plain module's answer
            raise AttributeError(name)
        if self.__name__ == "pandas" and name == "DataFrame" and not _real_pandas_imported():
            return _NotImported
        if self.__name__ == "pandas.api.types" and name in _TYPES_NAMES and not _real_pandas_imported():
            return _deferred(self.__name__, name)
        if self.__name__ == "dateutil.parser" and name == "isoparse":
            return _deferred(self.__name__, name)
        return getattr(_real(self.__name__), name)


@contextmanager
def deferred_imports() -> Iterator[None]:
    """Import pymilvus inside this block to leave pandas, requests and dateutil out until they are used (each
    is left alone if it is imported already)."""
    placed = {name: _StandIn(name) for name in _STANDING_IN if name.partition(".")[0] not in sys.modules}
    with _lock:
        sys.modules.update(placed)
    try:
        yield
    finally:
        with _lock:
            for name, stand_in in placed.items():
                if sys.modules.get(name) is stand_in:
                    del sys.modules[name]
