from memgpt.cli import executable

executable()
