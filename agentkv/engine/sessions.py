"""Session names (a client's conversation id) to the small numbers the cache policy keys its per-session state
by, for the most recently seen `capacity` sessions only.

A public server sees any number of distinct ids, so this map (and the agent policy's per-session arrays,
indexed by these numbers) must not grow with them: past `capacity` the least recently seen session is
forgotten, its number reused and the policy told to reset that session's state. Names are kept as 16-byte
digests, so a long id costs no more than a short one.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

MAX_SESSIONS = 65_536  # sessions the policy follows at once (memory: ~100 bytes each here, plus the policy's)


class SessionIds:
    def __init__(self, on_reuse: Callable[[int], None], capacity: int = MAX_SESSIONS) -> None:
        if capacity < 1:
            raise ValueError(f"max_sessions must be >= 1, got {capacity}")
        self.capacity, self.on_reuse = capacity, on_reuse
        self._ids: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, name: str) -> int | None:
        """The session's number if it is followed now (without counting this as a use)."""
        return self._ids.get(_digest(name))

    def __call__(self, name: str) -> int:
        """The session's number, giving it one (the least recently seen session's, when full)."""
        key = _digest(name)
        number = self._ids.get(key)
        if number is not None:
            self._ids.move_to_end(key)
            return number
        if len(self._ids) < self.capacity:
            number = len(self._ids)
        else:
            _, number = self._ids.popitem(last=False)
            self.on_reuse(number)
        self._ids[key] = number
        return number


def _digest(name: str) -> bytes:
    return hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).digest()
