"""Core memory: named blocks always in the prompt, each with a character limit the agent edits within."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from memgpt.errors import StorageError, ToolError
from memgpt.types import Block

if TYPE_CHECKING:
    from memgpt.storage import Storage

DEFAULT_LIMIT = 2000


class CoreMemory:
    """Edits are checked before anything changes: a refused edit leaves the block as it was."""

    def __init__(self, blocks: list[Block]) -> None:
        self._blocks = {b.label: b for b in blocks}
        self.changed: set[str] = set()

    @property
    def blocks(self) -> list[Block]:
        return list(self._blocks.values())

    def get(self, label: str) -> Block:
        block = self._blocks.get(label)
        if block is None:
            known = ", ".join(sorted(self._blocks))
            raise ToolError(f"there is no core memory block named {label!r}; the blocks are: {known}")
        return block

    def _set(self, block: Block, value: str) -> Block:
        if block.read_only:
            raise ToolError(f"the {block.label} block is read-only: you can read it but not change it")
        if len(value) > block.limit:
            raise ToolError(
                f"edit refused: the {block.label} block would hold {len(value)} characters, over its limit of "
                f"{block.limit}. Nothing was changed. Make room with core_memory_replace (shorten or drop old "
                "lines) or store details in archival memory instead."
            )
        updated = replace(block, value=value)
        self._blocks[block.label] = updated
        self.changed.add(block.label)
        return updated

    def append(self, label: str, content: str) -> Block:
        block = self.get(label)
        if not content.strip():
            raise ToolError("content is empty; nothing was appended")
        value = f"{block.value}\n{content}" if block.value else content
        return self._set(block, value)

    def replace(self, label: str, old_content: str, new_content: str) -> Block:
        block = self.get(label)
        if not old_content:
            raise ToolError("old_content is empty; give the exact text to replace (use core_memory_append to add)")
        count = block.value.count(old_content)
        if count == 0:
            raise ToolError(
                f"old_content was not found in the {label} block; nothing was changed. Copy the exact text "
                "from the block, including punctuation and case."
            )
        return self._set(block, block.value.replace(old_content, new_content))

    def restore(self, blocks: Sequence[Block]) -> None:
        """Put blocks back as stored (the values before an undone step), not as changes to commit."""
        for block in blocks:
            self._blocks[block.label] = block
            self.changed.discard(block.label)

    def render(self) -> str:
        parts = []
        for block in self._blocks.values():
            parts.append(
                f'<{block.label} characters="{len(block.value)}/{block.limit}">\n{block.value}\n</{block.label}>'
            )
        return "\n".join(parts)


def edit_stored(storage: Storage, agent_id: str, edit: Callable[[CoreMemory], Block], *, attempts: int = 5) -> Block:
    """Apply one ``CoreMemory`` edit (append, replace: same checks and limits as the agent's tools) to the
    stored blocks, outside an agent step. Written only if the block did not change meanwhile, else the
    edit is made again on the new value; the agent's next step sees it."""
    for _ in range(attempts):
        core = CoreMemory(storage.agents.blocks(agent_id))
        before = {b.label: b.value for b in core.blocks}
        block = edit(core)
        if storage.agents.swap_block_value(agent_id, block.label, before[block.label], block.value):
            return block
    raise StorageError(f"core memory block kept changing during {attempts} tries; try again")
