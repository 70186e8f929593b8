"""MCP both ways: tools from MCP servers for memgpt agents, and memgpt's memory as an MCP server.

registry.py: the servers a user added (``<home>/mcp.toml``); pool.py: which servers each agent uses and
the running ones, shared by a process's agents; tools.py: their tools as memgpt ``Tool``s. client.py
(sessions with servers) and serve.py (the memory tools as a server) are the only modules that import
the ``mcp`` SDK (about 0.8 s), so import them lazily.
"""
