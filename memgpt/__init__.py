"""memgpt: stateful LLM agents with tiered memory, archival memory in Milvus."""

__version__ = "0.1.0"
