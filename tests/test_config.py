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


# As in a REPL or a notebook (sys.ps1), where python-dotenv looks for .env in the working folder: open Milvus Lite
# (pymilvus is imported, and its settings module calls load_dotenv()), then ask which LLM is configured.
DOTENV_CHILD = """
import os, sys
sys.ps1 = ">>> "
from memgpt.config import LLMSettings
from memgpt.errors import ConfigError
from memgpt.llm import resolve_llm
from memgpt.storage.milvus import MilvusConnection, MilvusTarget, lite
connection = MilvusConnection(MilvusTarget(os.path.abspath("milvus.db")))
connection.ping()
connection.close()
lite.servers.stop_all()
try:
    print("provider", resolve_llm(LLMSettings()).provider)
except ConfigError as exc:
    print("refused", exc)
print("probe", os.environ.get("MEMGPT_DOTENV_PROBE"), os.environ.get("PYTHON_DOTENV_DISABLED"))
"""


def test_a_dotenv_file_does_not_reach_memgpts_config_through_pymilvus(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-from-a-dotenv-file\nMEMGPT_DOTENV_PROBE=loaded\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY")}
    env.update(MEMGPT_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    child = subprocess.run(
        [sys.executable, "-c", DOTENV_CHILD], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, child.stderr
    assert "refused no LLM configured" in child.stdout, child.stdout
    assert "probe None None" in child.stdout  # nothing from the file, and python-dotenv's switch is set back
