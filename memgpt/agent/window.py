"""The messages in an agent's context window, held in memory with each one's chat form and token count.

A step used to read the window from SQL, render every message and count its tokens two or three times;
now the window is read once when the agent opens and kept up to date by the agent's own writes (an
open agent is the only writer of its messages: one turn at a time). A stored message never changes:
/rethink and /rewrite store a new ``Message`` object, so a cache entry is valid while it holds the very
object it was made from. Each message has a bound (its UTF-8 bytes, free) and an exact count, taken only
when asked for: a window far from its limit needs no tokenizer (see ``memgpt.tokens.bound_text``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from memgpt.llm.base import ChatMessage, EncodedChat
from memgpt.memory.messages import to_chat
from memgpt.tokens import bound_message, count_message
from memgpt.types import Message


class _Entry:
    """One message's chat form, its bound and (once asked for) its exact count."""

    __slots__ = ("bound", "chat", "exact", "message")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.chat = EncodedChat(to_chat(message))  # its JSON text made once, for every request it is in
        self.bound = bound_message(self.chat)
        self.exact: int | None = None

    def tokens(self, model: str) -> int:
        if self.exact is None:
            self.exact = count_message(model, self.chat)
        return self.exact


class Window:
    """The window's messages, oldest first, with their chat messages and sizes (our tokenizer's count, and a
    bound that is at least that)."""

    def __init__(self, model: str, messages: Iterable[Message]) -> None:
        self.model = model
        self.messages: list[Message] = list(messages)
        self._rendered: dict[str, _Entry] = {}
        # The whole window's chat messages, bound and tokens as last computed; a step only appends to them.
        self._chats: list[ChatMessage] | None = None
        self._bound: int | None = None
        self._tokens: int | None = None
        self._ids: set[str] | None = None  # the messages' ids, once asked (``holds``)

    def _entry(self, message: Message) -> _Entry:
        entry = self._rendered.get(message.id)
        if entry is None or entry.message is not message:
            entry = _Entry(message)
            self._rendered[message.id] = entry
        return entry

    def holds(self, message_id: str) -> bool:
        """Whether the message of this id is in the window (a set's look-up: a turn asks it of its new message,
        which is most often not there, and a scan went through the whole window each turn)."""
        if self._ids is None:
            self._ids = {m.id for m in self.messages}
        return message_id in self._ids

    def chats(self) -> list[ChatMessage]:
        """The window as chat messages (the same list until the window changes: do not modify it)."""
        if self._chats is None:
            self._chats = [self._entry(m).chat for m in self.messages]
        return self._chats

    def size(self, message: Message) -> int:
        return self._entry(message).tokens(self.model)

    def size_bound(self, message: Message) -> int:
        """At least ``size(message)``, without the tokenizer."""
        return self._entry(message).bound

    def bound(self) -> int:
        """At least ``tokens()``, without the tokenizer."""
        if self._bound is None:
            self._bound = sum(self._entry(m).bound for m in self.messages)
        return self._bound

    def tokens(self) -> int:
        if self._tokens is None:
            self._tokens = sum(self._entry(m).tokens(self.model) for m in self.messages)
        return self._tokens

    def extend(self, messages: Sequence[Message]) -> None:
        self.messages.extend(messages)
        if self._ids is not None:
            self._ids.update(m.id for m in messages)
        if self._chats is not None:
            self._chats = [*self._chats, *(self._entry(m).chat for m in messages)]
        if self._bound is not None:
            self._bound += sum(self._entry(m).bound for m in messages)
        if self._tokens is not None:
            self._tokens += sum(self._entry(m).tokens(self.model) for m in messages)

    def _changed(self) -> None:
        self._chats = self._bound = self._tokens = self._ids = None

    def evict(self, count: int) -> None:
        """The oldest ``count`` messages left the window (they stay in recall)."""
        for message in self.messages[:count]:
            self._rendered.pop(message.id, None)
        del self.messages[:count]
        self._changed()

    def remove(self, message_ids: Iterable[str]) -> None:
        gone = set(message_ids)
        for message_id in gone:
            self._rendered.pop(message_id, None)
        self.messages = [m for m in self.messages if m.id not in gone]
        self._changed()

    def replace(self, message: Message) -> None:
        self.messages = [message if m.id == message.id else m for m in self.messages]
        self._changed()
