"""One router per resource; ``memgpt.server.app`` mounts them."""
