"""`memgpt server`: agents shared by many users and apps over HTTP.

Letta's ``/v1`` REST shape (so Letta's own ``letta-client`` drives it unchanged) and an OpenAI-compatible
chat endpoint for chat UIs, both on the same agent and storage code as the CLI. ``app.create_app`` builds
the application; ``routes/`` hold one module per resource; ``schemas`` are API shapes only, never rows.
"""
