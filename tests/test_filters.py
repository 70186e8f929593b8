import pytest

from memgpt.storage.filters import MATCH_ALL, all_of, between, eq, is_in, not_in, quote


def test_quote_escapes_quotes_and_backslashes() -> None:
    assert quote('it\'s "x"') == '"it\'s \\"x\\""'
    assert quote("a\\") == '"a\\\\"'


@pytest.mark.parametrize("value", ["a\nb", "x\x00", "\r"])
def test_control_characters_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="control characters"):
        quote(value)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="not a filterable field"):
        eq("text", "x")
    with pytest.raises(ValueError, match="not a filterable field"):
        eq("source_id or 1==1", "x")
    with pytest.raises(ValueError, match="not a filterable field"):
        eq("source_id", 3)  # int compared to a string field


def test_combinators() -> None:
    combined = all_of(eq("user_id", "u"), MATCH_ALL, is_in("source_id", ["a", "b"]))
    assert combined.expr == '(user_id == "u") and (source_id in ["a", "b"])'
    assert not_in("document_id", []).expr == ""
    assert between("created_at", 1, None).expr == "created_at >= 1"
    assert between("created_at", 1, 5).expr == "created_at >= 1 and created_at <= 5"


def test_empty_in_matches_nothing_rather_than_everything() -> None:
    assert is_in("source_id", []).expr == 'source_id == "" and source_id != ""'
