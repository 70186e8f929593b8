from pathlib import Path

import pytest

from memgpt.config import Config, load_config, memgpt_home, resolve_milvus_uri, save_config
from memgpt.errors import ConfigError


def test_home_follows_environment(home: Path) -> None:
    assert memgpt_home() == home.resolve()


def test_first_load_saves_defaults_so_user_id_is_stable(home: Path) -> None:
    first = load_config(home)
    assert (home / "config.toml").exists()
    assert load_config(home).user_id == first.user_id
    assert first.milvus_uri(home) == str(home / "milvus.db")


def test_round_trip_and_owner_only_permissions(home: Path) -> None:
    config = Config()
    config.milvus.uri = "http://localhost:19530"
    config.milvus.token = "root:Milvus"
    config.llm.context_window = 8192
    path = save_config(config, home)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_config(home)
    assert again == config


def test_invalid_toml_is_one_clear_error(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_text("user_id = [unclosed\n")
    with pytest.raises(ConfigError, match=r"config\.toml is not valid TOML"):
        load_config(home)


def test_invalid_value_names_the_field(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_text('[embedding]\nchunk_size = "big"\n')
    with pytest.raises(ConfigError, match=r"embedding\.chunk_size"):
        load_config(home)


def test_tilde_is_expanded_for_milvus_lite() -> None:
    assert resolve_milvus_uri("~/.memgpt/milvus.db") == str(Path.home() / ".memgpt" / "milvus.db")


def test_server_uri_passes_through() -> None:
    assert resolve_milvus_uri(" http://localhost:19530 ") == "http://localhost:19530"
    assert resolve_milvus_uri("https://x.zillizcloud.com") == "https://x.zillizcloud.com"


@pytest.mark.parametrize("bad", ["/tmp/x/milvus", "/tmp/x/my milvus.db", "/tmp/x/" + "a" * 40 + ".db", ""])
def test_unusable_lite_paths_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        resolve_milvus_uri(bad)
