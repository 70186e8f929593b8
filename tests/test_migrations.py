from pathlib import Path

from sqlalchemy import create_engine, inspect

from memgpt.storage import agents, attachments, messages, templates  # noqa: F401 - register their tables on Base
from memgpt.storage.migrations import MIGRATIONS, apply_migrations
from memgpt.storage.sql import Base, MetadataStore


def test_migrations_build_exactly_the_orm_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    MetadataStore(url).close()
    engine = create_engine(url)
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, (table.name, column.name)
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        assert {i.name for i in table.indexes} <= indexes, table.name
    assert inspector.get_unique_constraints("sources")[0]["column_names"] == ["user_id", "name"]
    assert {t.name for t in Base.metadata.sorted_tables} <= set(inspector.get_table_names())
    assert len(Base.metadata.sorted_tables) == 7


def test_migrations_are_recorded_and_applied_once(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    assert apply_migrations(engine) == [name for name, _ in MIGRATIONS]
    assert apply_migrations(engine) == []


def test_an_older_database_is_upgraded_in_place(tmp_path: Path) -> None:
    """A database made before the agent tables existed gets them on open, keeping its sources."""
    from sqlalchemy import text

    from memgpt.storage.migrations import _0001_sources_and_documents

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        _0001_sources_and_documents(conn)
        conn.execute(text("create table schema_migrations (name varchar(128) primary key, applied_at timestamp)"))
        conn.execute(text("insert into schema_migrations values ('0001_sources_and_documents', '2026-01-01')"))
        conn.execute(text("insert into sources values ('s1', 'u', 'kept', '', 'm', 4, 'ready', '2026-01-01')"))
    MetadataStore(url).close()
    inspector = inspect(create_engine(url))
    assert {"agents", "messages", "blocks", "agent_sources", "templates"} <= set(inspector.get_table_names())
    with create_engine(url).connect() as conn:
        assert conn.execute(text("select name from sources")).scalar() == "kept"
