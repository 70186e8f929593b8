"""A pytest plugin (``-p tests.no_pandas``): pymilvus is imported as memgpt imports it (pandas left out) before
any test module, and the session fails if pandas was imported by its end. tests/test_startup.py runs the
Milvus store's contract under it; in the whole suite other tests import pymilvus, hence pandas, first."""

from __future__ import annotations

import sys

import pytest

from memgpt.storage.milvus.client import import_client_modules

import_client_modules()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaked = sorted(name for name in sys.modules if name == "pandas" or name.startswith("pandas."))
    if leaked:
        print(f"\npandas was imported: {leaked[:5]}", flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        print("\npandas was never imported", flush=True)
