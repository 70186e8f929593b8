"""The embedding model interface: one abstract method, the rest built on it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from memgpt.errors import EmbeddingError
from memgpt.types import EmbeddingSpace

Vector = list[float]


class EmbeddingModel(ABC):
    """Turns text into unit-length vectors of a fixed dimension.

    Subclasses set ``model_id`` (stored with every source and collection), ``dimensions``,
    ``max_input_tokens`` (the longest text, in this model's own tokens, that is embedded whole) and
    implement ``embed_batch`` and ``count_tokens``.
    """

    model_id: str
    dimensions: int
    max_input_tokens: int
    batch_size: int = 32

    @property
    def space(self) -> EmbeddingSpace:
        """Where this model's vectors live: they are comparable only with vectors of the same space."""
        return EmbeddingSpace(self.model_id, self.dimensions)

    @abstractmethod
    def embed_batch(self, texts: Sequence[str]) -> list[Vector]:
        """One vector per text, in order."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as this model's tokenizer counts them (no special tokens)."""

    def load_early(self) -> None:  # noqa: B027 - an optional hook: most models have nothing to load
        """Start loading whatever embedding needs (in the background), for a caller that will embed soon.
        Call it from the main thread. Nothing to do by default."""

    def batches(self, texts: Sequence[str]) -> list[list[int]]:
        """The positions of ``texts`` in the batches :meth:`embed_multi` sends: ``batch_size`` at a time, in
        order of length. Every position appears once."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        return [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def embed(self, text: str) -> Vector:
        return self.embed_multi([text])[0]

    def embed_multi(self, texts: Sequence[str], *, on_progress: Callable[[int], None] | None = None) -> list[Vector]:
        """Embed any number of texts in batches, reporting how many were done after each batch.

        Texts are batched by length (see :meth:`batches`) so short ones are not padded to the longest in
        the corpus.
        """
        vectors: list[Vector | None] = [None] * len(texts)
        for chunk in self.batches(texts):
            batch = self.embed_batch([texts[i] for i in chunk])
            if len(batch) != len(chunk):
                raise EmbeddingError(f"{self.model_id} returned {len(batch)} vectors for {len(chunk)} texts")
            for index, vector in zip(chunk, batch, strict=True):
                if len(vector) != self.dimensions:
                    raise EmbeddingError(
                        f"{self.model_id} returned vectors of dimension {len(vector)}, expected "
                        f"{self.dimensions}; set the embedding dimensions in `memgpt configure`"
                    )
                vectors[index] = vector
            if on_progress:
                on_progress(len(chunk))
        return [v for v in vectors if v is not None]
