"""Chat UIs' background requests to the OpenAI-compatible endpoint: a conversation's title, its tags, follow-up
questions, a summary. A UI sends them to the same model (the agent) as the person's messages; stored as the
person's messages they would fill the agent's memory with the UI's own instructions. So they are answered by the
agent's LLM alone, without its memory or tools, and never stored.

Which requests are background ones, in this order (the first that applies decides):

1. The request says so: the header ``X-Memgpt-Background: true`` (or ``false``: a message to remember, whatever
   its words), for clients that can mark their background requests (a UI's separate title endpoint, a script).
2. Its shape is one a known UI uses for its own default prompts (``KNOWN``): an instruction message that begins with
   the UI's words, as the request's last message, or as its system prompt where the UI puts the instruction there.
   A UI's prompt the person rewrote in its settings is not recognised: mark it with the header, or switch it off.
3. Otherwise it is the person's message, and the agent remembers it: a message is never dropped on a guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from memgpt.errors import UserError

HEADER = "X-Memgpt-Background"
_YES, _NO = ("true", "1", "yes"), ("false", "0", "no")


class Said(Protocol):
    """A message of the request (``ChatMessageIn``)."""

    role: str

    def text(self) -> str: ...


@dataclass(frozen=True)
class Shape:
    """A UI's background request: its instruction message begins with ``opening`` (and holds ``also``, when set),
    and is the request's ``last`` message (of any role), or a ``system`` (or developer) message of it. ``alone``:
    the UI sends the instruction with the chat inside it, as the request's only message (system ones aside), so a
    person's message in a conversation that begins with the same words is never taken for it."""

    ui: str
    what: str
    opening: str
    where: Literal["last", "system"]
    also: str = ""
    alone: bool = False

    def matches(self, text: str) -> bool:
        folded = text.lstrip().casefold()
        return folded.startswith(self.opening.casefold()) and self.also.casefold() in folded


# The UIs' default prompts, as their sources have them (checked November 2026).
KNOWN: tuple[Shape, ...] = (
    # Titles, tags, follow-ups, search queries: the chat in <chat_history> (its RAG prompt, a real message, also
    # begins "### Task:", with the person's words in <user_query>: it has no <chat_history>).
    Shape("Open WebUI", "titles, tags, follow-up questions", "### Task:", "last", also="<chat_history>", alone=True),
    Shape("LibreChat", "titles", "Provide a concise, 5-word-or-less title for the conversation", "last", alone=True),
    Shape(
        "LibreChat",
        "titles (structured)",
        "Analyze this conversation and provide:\n1. The detected language of the conversation",
        "last",
        also="A concise title in the detected language",
        alone=True,
    ),
    Shape("LibreChat", "titles (before 0.7.6)", "Please generate ", "last", also="||>Title:", alone=True),
    Shape("LobeChat", "topic titles", "You are a professional conversation summarizer", "system"),
    Shape("Chatbox", "conversation names", "Name the conversation based on the chat records", "last"),
    Shape("Chatbox", "conversation names", "Name the conversation based on the chat records", "system"),
    Shape("NextChat", "topic titles", "Please generate a four to five word title summarizing our conversation", "last"),
    Shape("NextChat", "summaries", "Summarize the discussion briefly in", "last", also="for future context"),
    Shape("SillyTavern", "summaries (Summarize extension)", "[Pause your roleplay. Summarize", "last"),
)


def background_shape(messages: Sequence[Said], headers: Mapping[str, str]) -> Shape | None:
    """Whether the request is a UI's background request (see the module): the shape it has (a made-up one for the
    header), or None for a message the agent must remember. A header of another value is a UserError."""
    marked = headers.get(HEADER)
    if marked is not None:
        value = marked.strip().lower()
        if value in _YES:
            return Shape("the client", "marked with the header", "", "last")
        if value in _NO:
            return None
        raise UserError(f"{HEADER}: {marked!r} is neither true nor false (true: answer without memory, store nothing)")
    if not messages:
        return None
    last = messages[-1].text()
    systems = [m.text() for m in messages if m.role in ("system", "developer")]
    alone = all(m.role in ("system", "developer") for m in messages[:-1])
    for shape in KNOWN:
        if shape.where == "last" and shape.matches(last) and (alone or not shape.alone):
            return shape
        if shape.where == "system" and any(shape.matches(text) for text in systems):
            return shape
    return None
