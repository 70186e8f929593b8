"""Claims on agents' recall indexing (storage/claims.py), on SQLite and PostgreSQL, with both ways of claiming:
one INSERT .. ON CONFLICT for all agents, or what another database gets (an UPDATE of an expired claim, else an
INSERT, per agent)."""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from memgpt.storage import Storage, expiring
from memgpt.storage import claims as storage_claims
from memgpt.storage.claims import IndexClaims
from memgpt.storage.expiring import HOST, new_owner

pytestmark = pytest.mark.usefixtures("metadata_url")


@pytest.fixture(params=["upsert", "separate"])
def claims(request: pytest.FixtureRequest, storage: Storage, monkeypatch: pytest.MonkeyPatch) -> Iterator[IndexClaims]:
    if request.param == "separate":
        monkeypatch.setattr(expiring, "_ON_CONFLICT", {})
    storage_claims._claim_statement.cache_clear()  # built once per dialect, from expiring._ON_CONFLICT
    yield IndexClaims(storage.metadata)
    storage_claims._claim_statement.cache_clear()


def owners(storage: Storage) -> dict[str, str]:
    with storage.metadata.connection() as c:
        return dict(c.execute(text("select agent_id, owner from recall_index_claims")).all())  # type: ignore[arg-type]


def test_agents_claimed_by_a_live_pass_are_not_claimed_again_until_given_back(
    claims: IndexClaims, storage: Storage
) -> None:
    first, second = new_owner(), new_owner()
    assert claims.claim(["a", "b", "c"], first, 60) == {"a", "b", "c"}
    assert claims.claim(["c", "d", "b"], second, 60) == {"d"}
    assert owners(storage) == {"a": first, "b": first, "c": first, "d": second}
    claims.release({"a", "b", "c", "d"}, first)  # "d" is not its claim: kept
    assert owners(storage) == {"d": second}
    assert claims.claim(["b", "d"], first, 60) == {"b"}


def test_an_expired_claim_is_taken(claims: IndexClaims, storage: Storage) -> None:
    first, second = new_owner(), new_owner()
    assert claims.claim(["a"], first, 0.2) == {"a"}
    assert claims.claim(["a"], second, 60) == set()
    time.sleep(0.3)
    assert claims.claim(["a"], second, 60) == {"a"}
    assert owners(storage) == {"a": second}


def test_a_claim_of_a_process_gone_from_this_host_is_taken_at_once(claims: IndexClaims, storage: Storage) -> None:
    """A process killed mid-pass (kill -9) gives nothing back: its claim is taken before it expires."""
    gone = f"{HOST}:{os.getpid()}:0:{'0' * 32}"  # this pid, started at another time: an earlier process
    alive = new_owner()
    assert claims.claim(["a", "b"], gone, 60) == {"a", "b"}
    assert claims.claim(["a"], alive, 60) == {"a"}
    assert owners(storage) == {"a": alive, "b": gone}


def test_a_renewed_claim_outlives_its_first_expiry_and_one_taken_meanwhile_is_not_renewed(
    claims: IndexClaims, storage: Storage
) -> None:
    first, second = new_owner(), new_owner()
    assert claims.claim(["a", "b"], first, 0.4) == {"a", "b"}
    assert claims.renew(["a"], first, 60) == {"a"}
    time.sleep(0.5)
    assert claims.claim(["a", "b"], second, 60) == {"b"}  # "b" expired; "a" was renewed
    assert claims.renew(["a", "b"], first, 60) == {"a"}  # "b" is the second's now: lost
    claims.release({"b"}, second)
    assert claims.renew(["b"], first, 60) == set()  # given back by its new owner: still not the first's
    assert owners(storage) == {"a": first}


def test_storage_modules_share_the_claim_rule_through_public_names() -> None:
    """A claim's rule (owner, clock, ON CONFLICT) lives in storage/expiring.py, which the lease and these claims
    both use: no storage module reaches into another's private names (claims.py once imported turns.py's)."""
    storage_dir = Path(storage_claims.__file__).parent
    private = []
    for path in sorted(storage_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("memgpt."):
                names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                private += [f"{path.name}: {node.module}.{name}" for name in names]
    assert private == []
