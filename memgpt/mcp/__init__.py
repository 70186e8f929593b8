"""Tools from MCP servers for memgpt agents.

registry.py: the servers a user added (``<home>/mcp.toml``); client.py: sessions with them (the only
module that imports the ``mcp`` SDK, so import it lazily); tools.py: their tools as memgpt ``Tool``s.
"""
