"""What a public endpoint bounds, so that no client (keyed or not) can take the server's memory, descriptors or
event loop: request bodies (size, items, time, a tenant's bytes in flight), header size and time, idle
connections, the number of connections. The numbers live here, free of the web stack, so the CLI builds its
flags on a core install; `guards.py`, `census.py` and `tenant_bytes.py` enforce them.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("agentkv.server")
FD_RESERVE = 128  # descriptors kept for the model, tiers, logs and the listening socket


@dataclass(slots=True)
class Limits:
    max_body_bytes: int = 8 << 20  # a 128k-token context is ~1 MB of JSON
    max_prompt_chars: int | None = None  # None: PROMPT_CHARS_PER_TOKEN x the context (see app.ServerConfig)
    max_header_bytes: int = 16 << 10
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0  # from the headers to the body's last byte (8 MiB at 2.2 Mbit/s)
    idle_timeout_s: float = 5.0
    max_connections: int = 2048
    # a long agent session (1,500 messages of a few parts, 20 tools) is ~15k items; 10k one-part messages
    # (50k items) decoded and validated in 29 ms on the 2-core sandbox, 200k in 1.7 s
    max_body_items: int = 32_768
    # a tenant's bodies from their headers to their response's end: 8 bodies of the largest size
    max_tenant_inflight_bytes: int = 64 << 20

    def fit_descriptors(self) -> int:
        """Raise the soft descriptor limit to the hard one; lower the connection cap below it if need be."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (ValueError, OSError):
                pass
        room = max(1, soft - FD_RESERVE)
        if self.max_connections > room:
            log.warning("--max-connections %d is above what %d descriptors allow: using %d",
                        self.max_connections, soft, room)
            self.max_connections = room
        return self.max_connections


def text_chars(value: Any) -> int:
    """Characters of text in a prompt's parts (strings in nested lists and dicts); iterative, so that no
    nesting a client sends can overflow the stack."""
    n, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            n += len(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return n
