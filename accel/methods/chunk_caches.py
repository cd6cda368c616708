"""What the chunk-cache methods (FlowCache, MotionCache) share: KV compression of clean chunks and the sparse
self-attention they compose with inside the chunks (any registered attention method, at its defaults)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from accel import methods
from accel.settings import KV_GRANULARITIES, MethodSettings, check_choice, check_kv_compression, meta


class AttentionChoices:
    """``dense`` and every sparse self-attention method of the registry that runs inside the chunked runner (the
    SkyReels-V2 family: Radial's and STA's masks need the whole video's tokens), read when iterated (the registry
    is complete only after every method module loaded)."""

    def __iter__(self) -> Iterator[str]:
        return iter(["dense", *methods.attention_names("skyreels")])

    def __contains__(self, name: object) -> bool:
        return name in list(self)


@dataclass(frozen=True)
class KVSettings(MethodSettings):
    """KV-cache compression of clean chunks, shared by the chunk caches (METHODS 3.2)."""

    kv_compress: bool = field(
        default=False, metadata=meta("Compress the K/V of clean chunks (importance - redundancy).", abbrev="kv")
    )
    kv_budget_chunks: int = field(default=1, metadata=meta("Clean K/V kept, in chunks' worth of tokens."))
    kv_lambda: float = field(default=0.07, metadata=meta("Weight of importance against redundancy in [0, 1]."))
    kv_granularity: str = field(
        default="token", metadata=meta("Keep tokens, whole frames or whole chunks.", choices=KV_GRANULARITIES)
    )
    attention: str = field(
        default="dense",
        metadata=meta(
            "Self-attention inside the chunks: dense or a sparse attention method (at its defaults).",
            choices=AttentionChoices(),
            abbrev="+",
            hide_default=True,
        ),
    )
    attention_tmr: bool = field(
        default=False, metadata=meta("Temporal Mask Reuse for that sparse attention.", abbrev="tmr")
    )

    def attention_settings(self) -> MethodSettings | None:
        if self.attention == "dense":
            return None
        return methods.settings_for(self.attention, {"tmr": self.attention_tmr})

    def _check_kv(self) -> None:
        check_choice("attention", self.attention, tuple(AttentionChoices()))
        check_kv_compression(self.kv_budget_chunks, self.kv_lambda, self.kv_granularity)
