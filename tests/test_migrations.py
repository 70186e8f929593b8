"""The metadata schema: migrations build exactly the ORM's schema, on SQLite and on PostgreSQL, and
upgrade older databases in place."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Inspector, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from memgpt.errors import SchemaMismatchError
from memgpt.storage import (  # noqa: F401 - register their tables on Base
    agents,
    attachments,
    claims,
    files,
    marks,
    mcp_servers,
    messages,
    templates,
    turns,
    users,
)
from memgpt.storage.migrations import MIGRATIONS, apply_migrations
from memgpt.storage.orm import Base
from memgpt.storage.sql import MetadataStore, create_metadata_engine, parse_metadata_url

pytestmark = pytest.mark.usefixtures("metadata_url")


def engine_for(url: str) -> Engine:
    return create_metadata_engine(parse_metadata_url(url))


@contextmanager
def another_database(request: pytest.FixtureRequest, url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database of the same kind as ``url``."""
    if url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'other.sqlite'}"
    else:
        with request.getfixturevalue("postgres_server").database() as other:
            yield other


def schema(inspector: Inspector, engine: Engine, table: str) -> dict[str, Any]:
    """What a table's shape is made of, comparable between two databases of one kind."""
    return {
        "columns": {
            c["name"]: (c["type"].compile(dialect=engine.dialect), c["nullable"]) for c in inspector.get_columns(table)
        },
        "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
        "indexes": {(i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)},
        "unique": {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)},
        "foreign_keys": {
            (tuple(f["constrained_columns"]), f["referred_table"], (f.get("options") or {}).get("ondelete"))
            for f in inspector.get_foreign_keys(table)
        },
    }


def test_migrations_build_exactly_the_orm_schema(
    metadata_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    MetadataStore(metadata_url).close()
    migrated = engine_for(metadata_url)
    inspector = inspect(migrated)
    for table in Base.metadata.sorted_tables:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, (table.name, column.name)
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        assert {i.name for i in table.indexes} <= indexes, table.name
    assert inspector.get_unique_constraints("sources")[0]["column_names"] == ["user_id", "name"]
    assert {t.name for t in Base.metadata.sorted_tables} <= set(inspector.get_table_names())
    assert len(Base.metadata.sorted_tables) == 19  # step_effects came with 0009, agent_mcp_servers with 0010,
    # passage_marks with 0014, recall_index_claims with 0017, deleted_agents and deleted_sources with 0020

    # Types, keys, indexes and cascades too: against the same database kind built from the models.
    with another_database(request, metadata_url, tmp_path) as other:
        from_models = engine_for(other)
        Base.metadata.create_all(from_models)
        reference = inspect(from_models)
        for table in Base.metadata.sorted_tables:
            assert schema(inspector, migrated, table.name) == schema(reference, from_models, table.name), table.name
        from_models.dispose()
    migrated.dispose()


def test_migrations_are_recorded_and_applied_once(metadata_url: str) -> None:
    engine = engine_for(metadata_url)
    assert apply_migrations(engine) == [name for name, _ in MIGRATIONS]
    assert apply_migrations(engine) == []
    with engine.connect() as conn:
        assert sorted(conn.scalars(text("select name from schema_migrations"))) == [name for name, _ in MIGRATIONS]
    engine.dispose()


def test_an_older_database_is_upgraded_in_place(metadata_url: str) -> None:
    """A database made before the agent tables existed gets them on open, keeping its sources."""
    from memgpt.storage.migrations import _0001_sources_and_documents

    engine = engine_for(metadata_url)
    with engine.begin() as conn:
        _0001_sources_and_documents(conn)
        conn.execute(text("create table schema_migrations (name varchar(128) primary key, applied_at timestamp)"))
        conn.execute(text("insert into schema_migrations values ('0001_sources_and_documents', '2026-01-01')"))
        conn.execute(text("insert into sources values ('s1', 'u', 'kept', '', 'm', 4, 'ready', '2026-01-01')"))
    MetadataStore(metadata_url).close()
    inspector = inspect(engine)
    assert {"agents", "messages", "blocks", "agent_sources", "templates"} <= set(inspector.get_table_names())
    with engine.connect() as conn:
        assert conn.execute(text("select name from sources")).scalar() == "kept"
    engine.dispose()


def test_messages_written_before_recall_indexing_are_kept_and_marked_unindexed(metadata_url: str) -> None:
    """Migration 0003 adds a NOT NULL column to a table that already has rows; 0004 retypes two columns
    (on SQLite by rebuilding the table)."""
    engine = engine_for(metadata_url)
    with engine.begin() as conn:
        for _name, migrate in MIGRATIONS[:2]:
            migrate(conn)
        conn.execute(text("create table schema_migrations (name varchar(128) primary key, applied_at timestamp)"))
        conn.execute(
            text("insert into schema_migrations values ('0001_sources_and_documents', '2026-01-01')"),
        )
        conn.execute(text("insert into schema_migrations values ('0002_agents', '2026-01-01')"))
        conn.execute(
            text(
                "insert into agents values ('a1', 'u', 'old', 'sam', 'basic', 'sys', 'gpt', 8000, 'm', 4, '', null, "
                "'2026-01-01')"
            )
        )
        conn.execute(
            text(
                "insert into messages values ('m1', 'a1', 1, 'user', 'hello from before', '[]', '', '', "
                "'2026-01-01', true, 'hello from before')"
            )
        )
    assert apply_migrations(engine) == [name for name, _ in MIGRATIONS[2:]]  # 0003 and every later one
    with engine.connect() as conn:
        assert conn.execute(text("select content, seq, indexed from messages")).one() == ("hello from before", 1, False)
    with engine.begin() as conn:  # the rebuilt table (SQLite) still cascades from its agent
        conn.execute(text("delete from agents"))
        assert conn.execute(text("select count(*) from messages")).scalar() == 0
    engine.dispose()


def test_a_database_from_a_newer_memgpt_is_refused_in_one_line(metadata_url: str) -> None:
    engine = engine_for(metadata_url)
    apply_migrations(engine)
    with engine.begin() as conn:
        conn.execute(text("insert into schema_migrations values ('0099_from_the_future', '2027-01-01')"))
    engine.dispose()
    with pytest.raises(SchemaMismatchError, match=r"upgraded by a newer memgpt \(migration 0099_from_the_future\)"):
        MetadataStore(metadata_url)


@pytest.mark.parametrize("database", ["new", "existing"])
def test_a_failing_migration_leaves_nothing_half_done(
    metadata_url: str, monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    """A migration and its ledger row commit together: DDL included, on SQLite as on PostgreSQL. A new
    database takes all of them in one transaction, so nothing at all is left; an existing one keeps those
    applied before the failing one."""
    import memgpt.storage.migrations as migrations

    def breaks_halfway(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE half_done (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO agents_that_do_not_exist VALUES (1)"))

    engine = engine_for(metadata_url)
    if database == "existing":
        apply_migrations(engine)
    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, ("0999_breaks_halfway", breaks_halfway)])
    with pytest.raises(SQLAlchemyError):
        apply_migrations(engine)
    tables = inspect(engine).get_table_names()
    assert "half_done" not in tables
    if database == "new":
        assert tables == []
    else:
        with engine.connect() as conn:
            ledger = sorted(conn.scalars(text("select name from schema_migrations")))
        assert ledger == [name for name, _ in MIGRATIONS]  # the ones before it stay applied
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
    assert apply_migrations(engine) == ([] if database == "existing" else [name for name, _ in MIGRATIONS])
    engine.dispose()


def test_a_new_database_in_one_transaction_equals_one_upgraded_a_migration_at_a_time(
    metadata_url: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new database gets every migration in one transaction, an existing one a transaction each: both end up
    with the same tables, columns, types, keys, indexes and cascades, on SQLite as on PostgreSQL -- also for
    migrations added later, which this builds both ways."""
    import memgpt.storage.migrations as migrations

    at_once = engine_for(metadata_url)
    assert apply_migrations(at_once) == [name for name, _ in MIGRATIONS]
    with another_database(request, metadata_url, tmp_path) as other:
        stepwise = engine_for(other)
        for applied in range(1, len(MIGRATIONS) + 1):
            monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:applied])
            assert apply_migrations(stepwise) == [MIGRATIONS[applied - 1][0]]
        one, each = inspect(at_once), inspect(stepwise)
        assert sorted(one.get_table_names()) == sorted(each.get_table_names())
        for table in one.get_table_names():
            assert schema(one, at_once, table) == schema(each, stepwise, table), table
        stepwise.dispose()
    at_once.dispose()
