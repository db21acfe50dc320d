"""Permissive text spaces for LLM environments.

Gymnasium's ``Text`` space only admits characters from a fixed charset, while an LLM writes arbitrary Unicode
(and a malformed or adversarial action is exactly what we want to observe, not reject). ``AnyText`` admits any
``str`` up to ``max_length`` characters; ``ChatMessages`` admits a tuple of JSON-able chat-message dicts.

Both register shared-memory handlers (UTF-8 / JSON in a fixed byte buffer) so that
``gym.make_vec(..., vectorization_mode="async")`` works with its default ``shared_memory=True``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.spaces import Space, Text
from gymnasium.vector.utils import shared_memory as _shm

_SAMPLE_CHARSET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,?!<>/\n" "éüß中文"
)
_SAMPLE_SNIPPETS = ("<search>", "</search>", "<answer>", "</answer>", "<think>", "</think>")


class AnyText(Text):
    """Any Python ``str`` of at most ``max_length`` characters.

    ``sample()`` mixes random characters with protocol tags so that random agents exercise the parser.
    """

    def __init__(self, max_length: int, *, min_length: int = 0, seed: int | np.random.Generator | None = None):
        super().__init__(max_length=max_length, min_length=min_length, charset=_SAMPLE_CHARSET, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        n_parts = int(self.np_random.integers(0, 6))
        parts = []
        for _ in range(n_parts):
            if self.np_random.random() < 0.4:
                parts.append(_SAMPLE_SNIPPETS[int(self.np_random.integers(len(_SAMPLE_SNIPPETS)))])
            else:
                length = int(self.np_random.integers(0, 12))
                idx = self.np_random.integers(0, len(self.character_list), size=length)
                parts.append("".join(self.character_list[i] for i in idx))
        text = "".join(parts)
        while len(text) < self.min_length:
            text += " "
        return text[: self.max_length]

    def __repr__(self) -> str:
        return f"AnyText(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, AnyText) and other.max_length == self.max_length and other.min_length == self.min_length

    def __hash__(self) -> int:
        return hash(("AnyText", self.min_length, self.max_length))


class ChatMessages(Space[tuple]):
    """A tuple of chat messages, each a dict with str ``role`` and ``content`` (plus JSON-able extras such as
    ``tool_calls``), as accepted by ``tokenizer.apply_chat_template`` and OpenAI-compatible servers."""

    def __init__(self, max_bytes: int = 1 << 23, seed: int | np.random.Generator | None = None):
        super().__init__(shape=None, dtype=None, seed=seed)
        self.max_bytes = max_bytes  # bound on the JSON encoding, used to size shared memory

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        if not isinstance(x, tuple):
            return False
        return all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in x
        )

    def sample(self, mask: Any = None, probability: Any = None) -> tuple:
        return ({"role": "user", "content": AnyText(64, seed=int(self.np_random.integers(1 << 31))).sample()},)

    def to_jsonable(self, sample_n: Any) -> list:
        return [list(sample) for sample in sample_n]

    def from_jsonable(self, sample_n: list) -> list:
        return [tuple(sample) for sample in sample_n]

    def __repr__(self) -> str:
        return "ChatMessages()"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ChatMessages)

    def __hash__(self) -> int:
        return hash("ChatMessages")


# --- shared memory for AsyncVectorEnv: each sub-env owns a fixed slot of bytes holding a length-prefixed payload.

_TEXT_BYTES_PER_CHAR = 4  # UTF-8 worst case


def _slot_bytes(space: Space) -> int:
    if isinstance(space, AnyText):
        return space.max_length * _TEXT_BYTES_PER_CHAR + 8
    return space.max_bytes + 8


def _encode(space: Space, value: Any) -> bytes:
    if isinstance(space, AnyText):
        return value.encode("utf-8", errors="surrogatepass")
    return json.dumps(list(value), ensure_ascii=False).encode("utf-8", errors="surrogatepass")


def _decode(space: Space, raw: bytes) -> Any:
    if isinstance(space, AnyText):
        return raw.decode("utf-8", errors="surrogatepass")
    return tuple(json.loads(raw.decode("utf-8", errors="surrogatepass"))) if raw else ()


@_shm.create_shared_memory.register(AnyText)
@_shm.create_shared_memory.register(ChatMessages)
def _create(space: Space, n: int = 1, ctx: Any = mp):
    return ctx.Array("B", n * _slot_bytes(space), lock=False)


class _SharedSlots(Sequence):
    """Live view of the sub-environments' slots. AsyncVectorEnv reads shared memory once at start-up and expects
    a view that reflects later writes (numpy views do this for Box); this decodes each slot on access, and
    ``deepcopy`` (what AsyncVectorEnv returns with ``copy=True``) materialises a plain tuple."""

    def __init__(self, space: Space, shared_memory: Any, n: int):
        self._space, self._memory, self._n, self._slot = space, shared_memory, n, _slot_bytes(space)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(self._n)))
        if not -self._n <= i < self._n:
            raise IndexError(i)
        buf = memoryview(self._memory).cast("B")
        start = (i % self._n) * self._slot
        length = int.from_bytes(buf[start : start + 8], "little")
        return _decode(self._space, bytes(buf[start + 8 : start + 8 + length]))

    def __deepcopy__(self, memo: dict) -> tuple:
        return tuple(self)

    def __eq__(self, other: Any) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, _SharedSlots)) else other)

    def __repr__(self) -> str:
        return repr(tuple(self))


@_shm.read_from_shared_memory.register(AnyText)
@_shm.read_from_shared_memory.register(ChatMessages)
def _read(space: Space, shared_memory: Any, n: int = 1) -> _SharedSlots:
    return _SharedSlots(space, shared_memory, n)


@_shm.write_to_shared_memory.register(AnyText)
@_shm.write_to_shared_memory.register(ChatMessages)
def _write(space: Space, index: int, value: Any, shared_memory: Any) -> None:
    slot = _slot_bytes(space)
    payload = _encode(space, value)
    if len(payload) > slot - 8:
        raise ValueError(
            f"observation of {len(payload)} bytes exceeds the {slot - 8}-byte shared-memory slot of {space!r}; "
            "raise the space's size or use shared_memory=False"
        )
    buf = memoryview(shared_memory).cast("B")
    start = index * slot
    buf[start : start + 8] = len(payload).to_bytes(8, "little")
    buf[start + 8 : start + 8 + len(payload)] = payload
