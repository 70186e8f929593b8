from pathlib import Path

from sqlalchemy import create_engine, inspect

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


def test_migrations_are_recorded_and_applied_once(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    assert apply_migrations(engine) == [name for name, _ in MIGRATIONS]
    assert apply_migrations(engine) == []
