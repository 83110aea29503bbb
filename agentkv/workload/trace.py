"""The trace model: sessions of requests, stored column-wise.

Real traces reach tens of thousands of requests and billions of tokens, so a trace is a handful of numpy
arrays rather than a list of objects, and each request's block ids are a log against the previous request of
its session (`BlockLog`): memory grows with the unique blocks, not the total tokens. Block ids are *dense*
(0..n_block_ids-1) and unique across the whole trace: loaders remap whatever ids a source uses (local per
session, global, content hashes) into this one space, so downstream code can index arrays by block id. A block id stands for its content and everything
before it, so equal ids mean reusable KV.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agentkv.workload.blocklog import NO_PARENT, BlockLog, lead_in_other_sessions

# How a response ended, which a serving engine knows when the turn ends: a tool call (the agent comes back in
# seconds) or the end of the turn (a person reads, for minutes or hours).
FINISH_UNKNOWN, FINISH_TOOL, FINISH_END = 0, 1, 2


@dataclass(slots=True)
class Trace:
    """Sessions (with parent links for sub-agents and a tenant each) and their requests.

    Requests are stored grouped by session and, inside a session, in time order. `time` is relative to the
    session's start; `session_start` is absolute (seconds) or NaN where the source has no clock, in which
    case an arrival model places the sessions.
    """

    block_size: int
    has_block_ids: bool
    session_names: list[str]
    session_start: np.ndarray  # float64 [S]
    session_parent: np.ndarray  # int32 [S], NO_PARENT for top-level sessions
    session_tenant: np.ndarray  # int32 [S], index into tenants
    tenants: list[str]
    session: np.ndarray  # int32 [R]
    time: np.ndarray  # float64 [R]
    input_tokens: np.ndarray  # int64 [R]
    output_tokens: np.ndarray  # int64 [R]
    think_time: np.ndarray  # float32 [R], NaN = unknown
    api_time: np.ndarray  # float32 [R], NaN = unknown
    finish: np.ndarray  # int8 [R], FINISH_*
    block_log: BlockLog  # request i's ids: blocks(i)
    source: str = ""
    skipped: list[str] = field(default_factory=list)  # reasons for records dropped under --skip-bad
    models: list[str] = field(default_factory=list)  # model names the requests name
    model: np.ndarray = None  # type: ignore[assignment]  # int16 [R], index into models, -1 = not recorded
    _lead: tuple | None = field(default=None, repr=False, compare=False)  # (block_log, session, lead_in_other_...)

    def __post_init__(self) -> None:
        if self.model is None:  # sources without a model per request
            self.model = np.full(len(self.session), -1, dtype=np.int16)

    def model_names(self) -> np.ndarray:
        """Each request's model name ('' where the source does not record one)."""
        return np.array([*self.models, ""], dtype=object)[self.model]

    @property
    def n_requests(self) -> int:
        return len(self.session)

    @property
    def n_sessions(self) -> int:
        return len(self.session_names)

    @property
    def n_block_ids(self) -> int:
        return self.block_log.n_ids()

    @property
    def blocks_per_request(self) -> np.ndarray:
        return self.block_log.lengths()

    def blocks(self, i: int) -> np.ndarray:
        """Request i's full list of block ids, built from its session's log (read-only). Readers that need only
        which ids a group of requests touches use `block_log.ids` / `covering`, never every request's list."""
        return self.block_log.blocks(i)

    def lead_in_other_sessions(self) -> tuple[np.ndarray, np.ndarray]:
        """Per request, how many of its leading blocks other sessions also name, and the request it takes them
        from (`blocklog.lead_in_other_sessions`: a replica that never served the session holds no more of its
        prompt). Computed once per trace."""
        if self._lead is None or self._lead[0] is not self.block_log or self._lead[1] is not self.session:
            got = lead_in_other_sessions(self.block_log, self.session_bounds())  # (a copy by `replace` recomputes)
            for a in got:
                a.flags.writeable = False
            self._lead = (self.block_log, self.session, got)
        return self._lead[2]

    def session_bounds(self) -> np.ndarray:
        """[S+1] offsets: session s owns requests bounds[s]:bounds[s+1] (requests are grouped by session)."""
        return np.searchsorted(self.session, np.arange(self.n_sessions + 1), side="left")

    def validate(self) -> None:
        """Check the invariants every loader and the generator promise; raise ValueError naming the first broken one."""
        r, s = self.n_requests, self.n_sessions
        for name, arr, n in [
            ("session_start", self.session_start, s),
            ("session_parent", self.session_parent, s),
            ("session_tenant", self.session_tenant, s),
            ("time", self.time, r),
            ("input_tokens", self.input_tokens, r),
            ("output_tokens", self.output_tokens, r),
            ("think_time", self.think_time, r),
            ("api_time", self.api_time, r),
            ("finish", self.finish, r),
            ("model", self.model, r),
            ("block_log.parent", self.block_log.parent, r),
            ("block_log.shared", self.block_log.shared, r),
            ("block_log.offsets", self.block_log.offsets, r + 1),
        ]:
            if len(arr) != n:
                raise ValueError(f"trace field {name}: length {len(arr)}, expected {n}")
        if r and (np.any(np.diff(self.session) < 0) or self.session[0] < 0 or self.session[-1] >= s):
            raise ValueError("trace field session: requests must be grouped by session in session order")
        if r and (self.model.min() < -1 or self.model.max() >= len(self.models)):
            raise ValueError("trace field model: index outside the model names")
        if np.any(self.input_tokens < 0) or np.any(self.output_tokens < 0):
            raise ValueError("trace: negative token count")
        self._validate_log()
        if self.has_block_ids:
            n = self.blocks_per_request
            need = self.input_tokens // self.block_size
            if np.any(n < need) or np.any(n > -(-self.input_tokens // self.block_size)):
                bad = int(np.flatnonzero((n < need) | (n > -(-self.input_tokens // self.block_size)))[0])
                raise ValueError(
                    f"trace request {bad}: {n[bad]} block ids for {self.input_tokens[bad]} tokens "
                    f"at block size {self.block_size}"
                )

    def _validate_log(self) -> None:
        log = self.block_log
        if log.offsets[0] != 0 or log.offsets[-1] != len(log.ids) or np.any(np.diff(log.offsets) < 0):
            raise ValueError("trace field block_log.offsets: does not span block_log.ids")
        p = log.parent
        linked = p >= 0
        if np.any(p >= np.arange(len(p))) or np.any(p < NO_PARENT) or np.any(log.shared < 0):
            raise ValueError("trace field block_log.parent: a parent must be an earlier request")
        if np.any(self.session[p[linked]] != self.session[linked]):
            raise ValueError("trace field block_log.parent: a parent must be in the request's session")
        lens = log.lengths()
        if np.any(log.shared[~linked] != 0) or np.any(log.shared[linked] > lens[p[linked]]):
            raise ValueError("trace field block_log.shared: more ids than the parent has")

    def replicate(self, copies: int) -> Trace:
        """`copies` independent copies of every session (fresh block ids, names suffixed): scales load for benchmarks."""
        if copies < 1:
            raise ValueError("copies must be >= 1")
        nb, ns, nr = self.n_block_ids, self.n_sessions, self.n_requests
        reps = range(copies)
        return Trace(
            block_size=self.block_size,
            has_block_ids=self.has_block_ids,
            session_names=[f"{n}#{k}" if k else n for k in reps for n in self.session_names],
            session_start=np.tile(self.session_start, copies),
            session_parent=np.concatenate(
                [np.where(self.session_parent >= 0, self.session_parent + k * ns, NO_PARENT) for k in reps]
            ).astype(np.int32),
            session_tenant=np.tile(self.session_tenant, copies),
            tenants=list(self.tenants),
            session=np.concatenate([self.session + k * ns for k in reps]).astype(np.int32),
            time=np.tile(self.time, copies),
            input_tokens=np.tile(self.input_tokens, copies),
            output_tokens=np.tile(self.output_tokens, copies),
            think_time=np.tile(self.think_time, copies),
            api_time=np.tile(self.api_time, copies),
            finish=np.tile(self.finish, copies),
            block_log=concat_logs([self.block_log] * copies, [k * nr for k in reps], [k * nb for k in reps]),
            source=f"{self.source} x{copies}",
            models=list(self.models),
            model=np.tile(self.model, copies),
        )


def concat_traces(traces: list[Trace]) -> Trace:
    """Several traces as one: sessions side by side, block ids kept apart (different sources share no KV)."""
    if not traces:
        raise ValueError("no traces to concatenate")
    if len(traces) == 1:
        return traces[0]
    bs = {t.block_size for t in traces if t.has_block_ids} or {traces[0].block_size}
    if len(bs) > 1:
        raise ValueError(f"cannot combine traces with different block sizes {sorted(bs)}")
    tenants: list[str] = []
    models: list[str] = []
    model_maps = [np.array([*(_index_of(models, m) for m in t.models), -1], dtype=np.int16) for t in traces]
    parts = []
    s_off = b_off = 0
    for t in traces:
        tmap = np.array([_index_of(tenants, name) for name in t.tenants], dtype=np.int32)
        parts.append((t, s_off, b_off, tmap))
        s_off += t.n_sessions
        b_off += t.n_block_ids
    r_off = np.cumsum([0] + [t.n_requests for t in traces[:-1]]).tolist()
    return Trace(
        block_size=bs.pop(),
        has_block_ids=all(t.has_block_ids for t in traces),
        session_names=[n for t in traces for n in t.session_names],
        session_start=np.concatenate([t.session_start for t in traces]),
        session_parent=np.concatenate(
            [np.where(t.session_parent >= 0, t.session_parent + so, NO_PARENT) for t, so, _, _ in parts]
        ).astype(np.int32),
        session_tenant=np.concatenate([tm[t.session_tenant] for t, _, _, tm in parts]).astype(np.int32),
        tenants=tenants,
        session=np.concatenate([t.session + so for t, so, _, _ in parts]).astype(np.int32),
        time=np.concatenate([t.time for t in traces]),
        input_tokens=np.concatenate([t.input_tokens for t in traces]),
        output_tokens=np.concatenate([t.output_tokens for t in traces]),
        think_time=np.concatenate([t.think_time for t in traces]),
        api_time=np.concatenate([t.api_time for t in traces]),
        finish=np.concatenate([t.finish for t in traces]),
        block_log=concat_logs([t.block_log for t in traces], r_off, [bo for _, _, bo, _ in parts]),
        source=" + ".join(t.source for t in traces),
        skipped=[s for t in traces for s in t.skipped],
        models=models,
        model=np.concatenate([mm[t.model] for t, mm in zip(traces, model_maps, strict=True)]).astype(np.int16),
    )


def concat_logs(logs: list[BlockLog], request_offsets: list[int], id_offsets: list[int]) -> BlockLog:
    """Logs one after another, requests and ids shifted so that none refers into another."""
    new = np.concatenate([[0], np.cumsum([len(g.ids) for g in logs])])
    return BlockLog(
        parent=np.concatenate([np.where(g.parent >= 0, g.parent + r, NO_PARENT) for g, r in zip(logs, request_offsets,
                                                                                                  strict=True)]),
        shared=np.concatenate([g.shared for g in logs]),
        offsets=np.concatenate([[0], *(g.offsets[1:] + n for g, n in zip(logs, new, strict=False))]).astype(np.int64),
        ids=np.concatenate([g.ids + b for g, b in zip(logs, id_offsets, strict=True)]).astype(np.int64),
    )


def _index_of(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)
