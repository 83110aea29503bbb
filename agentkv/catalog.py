"""Catalogs kept as editable data files (agentkv/data/*.toml): models, hardware, prices.

Every entry carries its public source. Pass your own file to override or extend the built-in one; entries are
plain dataclasses so the rest of the code never reads TOML.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any, TypeVar

T = TypeVar("T")


ATTENTION_KINDS = ("full", "sliding", "chunked", "compressed", "linear", "mla")


@dataclass(slots=True, frozen=True)
class LayerGroup:
    """Layers that attend alike: what each keeps per token (or per sequence) and which keys a query sees.

    full: K and V of every token. sliding: of the last `window` tokens. chunked: of the tokens since the last
    multiple of `window` (Llama 4's local layers). mla: one latent of `latent` + `rope` values per token, shared
    by all heads. compressed: one shared K=V vector of `head_dim` per `ratio` tokens, plus the raw last `window`
    tokens (DeepSeek V4's CSA/HCA). linear: a recurrent state of `state_bytes` per sequence, whatever the
    context (gated DeltaNet, Mamba); a compressed layer's compressor also keeps `state_bytes` of its partial
    window. Any kind may be sparse: each query attends to at most `top_k` entries,
    chosen by an indexer of `index_heads` × `index_dim` that scores every entry (DeepSeek's DSA)."""

    kind: str
    layers: int
    window: int = 0
    kv_heads: int = 0  # 0: the model's
    head_dim: int = 0  # 0: the model's
    ratio: int = 1
    top_k: int = 0  # 0: dense
    latent: int = 0
    rope: int = 0
    index_heads: int = 0
    index_dim: int = 0
    index_bits: int = 8  # the indexer's keys: fp8 (DeepSeek-V3.2) or fp4 (V4), each entry with a 4-byte scale
    state_bytes: int = 0  # per sequence and layer: a linear layer's state, a compressed layer's partial window
    shared_kv: bool = False  # one vector serves as key and value (DeepSeek V4): half the bytes of K and V

    def __post_init__(self) -> None:
        if self.kind not in ATTENTION_KINDS:
            raise ValueError(f"attention kind '{self.kind}' (known: {', '.join(ATTENTION_KINDS)})")
        if self.layers < 1 or self.ratio < 1:
            raise ValueError(f"{self.kind} layers: layers and ratio must be >= 1")
        need = {"sliding": "window", "chunked": "window", "mla": "latent", "linear": "state_bytes"}.get(self.kind)
        if need and getattr(self, need) <= 0:
            raise ValueError(f"{self.kind} layers need {need} > 0")

    def flops_per_pair(self, model: ModelSpec) -> float:
        """QK^T and PV over every query head, 2 FLOPs per multiply-add, all layers of the group, per (query,
        key) pair; MLA attends in its latent space (absorbed weights): latent + rope for keys, latent for
        values."""
        if self.kind == "linear":
            return 0.0
        dim = (2 * self.latent + self.rope) / 2 if self.kind == "mla" else self.head_dim or model.head_dim
        return 4.0 * self.layers * model.heads * dim

    def prefill_flops_per_pair(self, model: ModelSpec) -> float:
        """The same for prefill queries. MLA prefill runs unabsorbed (vLLM's and SGLang's MLA prefill path): keys of
        head_dim + rope and values of head_dim per head, expanded from the latent, far fewer FLOPs per pair than
        the absorbed form decode uses to read the latent once."""
        if self.kind != "mla":
            return self.flops_per_pair(model)
        return 4.0 * self.layers * model.heads * (2 * model.head_dim + self.rope) / 2


@dataclass(slots=True, frozen=True)
class ModelSpec:
    name: str
    source: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    params_total: float
    params_active: float
    context: int
    mla_latent: int = 0
    mla_rope_dim: int = 0
    attention: tuple[LayerGroup, ...] = ()  # empty: every layer full (or MLA where mla_latent is set)
    unpublished: str = ""  # figures the entry estimates, and why
    context_extended: int = 0  # the window with documented RoPE scaling (YaRN), beyond the native `context`
    experts: int = 0  # routed experts per MoE layer (0: dense, or not stated)
    experts_per_token: int = 0  # routed experts each token goes to (top-k); shared experts count as always active

    def __post_init__(self) -> None:
        groups = tuple(g if isinstance(g, LayerGroup) else LayerGroup(**g) for g in self.attention)
        object.__setattr__(self, "attention", groups)
        if groups and sum(g.layers for g in groups) != self.layers:
            raise ValueError(f"attention groups cover {sum(g.layers for g in groups)} layers, not {self.layers}")
        if self.context_extended and self.context_extended < self.context:
            raise ValueError(f"context_extended={self.context_extended} is below the native context={self.context}")
        if self.experts_per_token > self.experts or (self.experts and not self.experts_per_token):
            raise ValueError(f"experts_per_token={self.experts_per_token} must be in 1..experts={self.experts}")

    @property
    def groups(self) -> tuple[LayerGroup, ...]:
        """The per-layer attention description every consumer reads (sizing, step cost, policies)."""
        if self.attention:
            return self.attention
        if self.is_mla:
            return (LayerGroup("mla", self.layers, latent=self.mla_latent, rope=self.mla_rope_dim),)
        return (LayerGroup("full", self.layers),)

    @property
    def is_mla(self) -> bool:
        return self.mla_latent > 0

    @property
    def is_moe(self) -> bool:
        return self.params_active < self.params_total

    @property
    def routed_params(self) -> float:
        """Parameters of the routed experts, all layers: total - active = routed · (1 - k/E), so the always-active
        rest (attention, shared experts, dense layers, embeddings) is what is left. 0 when the experts are not
        stated."""
        if not (self.experts and self.experts_per_token):
            return 0.0
        return (self.params_total - self.params_active) / (1.0 - self.experts_per_token / self.experts)

    @property
    def dense_params(self) -> float:
        """Parameters every token uses: attention, shared experts, dense layers, embeddings."""
        return self.params_total - self.routed_params


@dataclass(slots=True, frozen=True)
class HardwareSpec:
    name: str
    source: str
    bf16_flops: float
    fp8_flops: float
    hbm_bytes: float
    hbm_bw: float
    host_link_bw: float
    dram_bytes: float
    nvme_bw: float
    interconnect_bw: float
    network_bw: float
    fp4_flops: float = 0.0  # dense FP4 tensor-core peak; 0: none (FP4 weights are dequantized, run at the bf16 rate)
    scale_up_gpus: int = 8  # devices one NVLink / Infinity Fabric domain joins (72 in an NVL72 rack)


def read_toml(name: str, path: str | None = None) -> dict[str, Any]:
    """The built-in `agentkv/data/{name}.toml`, or the file at `path` when given."""
    if path:
        with open(path, "rb") as f:
            return tomllib.load(f)
    return tomllib.loads(resources.files("agentkv.data").joinpath(f"{name}.toml").read_text())


def entries(cls: type[T], raw: dict[str, Any], what: str) -> dict[str, T]:
    """Each table of `raw` as a `cls`, with errors naming the entry and field."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    out = {}
    for name, table in raw.items():
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"{what} '{name}': unknown field '{unknown[0]}'")
        try:
            out[name] = cls(name=name, **table)  # type: ignore[call-arg]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what} '{name}': {e}") from None
    return out


def lookup(table: dict[str, T], name: str, what: str) -> T:
    if name not in table:
        raise ValueError(f"unknown {what} '{name}' (known: {', '.join(sorted(table))})")
    return table[name]


def models(path: str | None = None) -> dict[str, ModelSpec]:
    return entries(ModelSpec, read_toml("models", path), "model")


def model(name: str, path: str | None = None) -> ModelSpec:
    return lookup(models(path), name, "model")


def hardware_table(path: str | None = None) -> dict[str, HardwareSpec]:
    return entries(HardwareSpec, read_toml("hardware", path), "hardware")


def hardware(name: str, path: str | None = None) -> HardwareSpec:
    return lookup(hardware_table(path), name, "hardware")


def prices(path: str | None = None) -> dict[str, Any]:
    return read_toml("prices", path)
