import pytest

from memgpt.storage.filters import MATCH_ALL, all_of, between, eq, is_in, key_of, meta_eq, not_in, quote


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


def test_search_form_compares_keys_and_the_exact_predicate_agrees() -> None:
    where = all_of(eq("user_id", 'u"1'), eq("kind", "archival"), is_in("source_id", ["a", "b"]) | eq("agent_id", "x"))
    user = key_of('u"1')
    assert where.keyed == (
        f"((user_key == {user}) and (kind_key == {key_of('archival')})) and "
        f"((source_key in [{key_of('a')}, {key_of('b')}]) or (agent_key == {key_of('x')}))"
    )
    row = {"user_id": 'u"1', "kind": "archival", "source_id": "b", "agent_id": "", "document_id": "d"}
    assert where.matches(row)
    assert not where.matches({**row, "user_id": "u1"})
    assert not where.matches({**row, "source_id": "c"})
    assert where.matches({**row, "source_id": "c", "agent_id": "x"})
    # Fields without keys keep their exact form in searches too.
    assert eq("document_id", "d").keyed == eq("document_id", "d").expr
    assert between("created_at", 5, 9).matches({"created_at": 9})
    assert not between("created_at", 5, 9).matches({"created_at": 10})
    assert not not_in("source_id", ["a"]).matches(row | {"source_id": "a"})
    assert not is_in("source_id", []).matches(row)


def test_keys_are_stable_signed_64_bit() -> None:
    assert key_of("archival") == key_of("archival") != key_of("recall")
    assert all(-(2**63) <= key_of(v) < 2**63 for v in ["", "x", "é" * 100])
    assert key_of("archival") == 5421183928539397098  # stored in collections: must never change


def test_metadata_equality_escapes_the_value_and_refuses_odd_keys() -> None:
    hostile = 'user" or metadata["role"] == "assistant'
    where = meta_eq("role", hostile)
    assert where.expr == 'metadata["role"] == "user\\" or metadata[\\"role\\"] == \\"assistant"'
    assert where.matches({"metadata": {"role": hostile}})
    assert not where.matches({"metadata": {"role": "assistant"}}) and not where.matches({"metadata": None})
    for key in ('role"]', "", "a b", "x" * 65):
        with pytest.raises(ValueError, match="not a metadata key"):
            meta_eq(key, "user")
