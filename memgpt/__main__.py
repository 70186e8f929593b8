from memgpt.cli import main

main()
