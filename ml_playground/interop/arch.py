"""Which architecture of Hugging Face transformers and llama.cpp computes exactly what our GPT computes.

Our options (`[train.model]`) combine freely; another implementation has a handful of fixed
architectures. `counterpart(config)` names the one whose computation equals ours, or raises one
`ExportError` line naming every option that has no equivalent, before anything is written:

  gpt2   learned positions, LayerNorm, GELU MLP, one KV head per query head, tied head,
         heads of n_embd / n_head
  llama  RoPE (Llama 3's frequency scaling allowed), RMSNorm, SwiGLU MLP, no biases (grouped-query
         attention, any head_dim and an untied head allowed)
  qwen2  llama plus biases on the query, key and value projections (qkv_bias)
  qwen3  llama plus QK-norm (RMSNorm over each head's queries and keys before RoPE)

None of them has a logit soft-cap. The same table gives an importer the options each one fixes
(`options_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ml_playground.config import GPTConfig
from ml_playground.errors import ExportError

Counterpart = Literal["gpt2", "llama", "qwen2", "qwen3"]


@dataclass(frozen=True, slots=True)
class Same:
    """The value of another key (grouped-query attention's n_kv_head = n_head: none)."""

    key: str


@dataclass(frozen=True, slots=True)
class PerHead:
    """n_embd / n_head: heads that split the model's width."""


@dataclass(frozen=True, slots=True)
class Need:
    """One option's value an architecture has: `train.model.<key>` must be `value`."""

    key: str
    value: bool | float | str | Same | PerHead | None

    def holds(self, config: GPTConfig) -> bool:
        wanted: object = self.value
        if isinstance(self.value, Same):
            wanted = getattr(config, self.value.key)
        elif isinstance(self.value, PerHead):
            wanted = config.n_embd // config.n_head if config.n_embd % config.n_head == 0 else None
        return bool(getattr(config, self.key) == wanted)

    @property
    def wanted(self) -> str:
        """What the architecture needs, for the error line."""
        if isinstance(self.value, Same):
            return self.value.key
        return "n_embd / n_head" if isinstance(self.value, PerHead) else toml_text(self.value)

    @property
    def fixed(self) -> bool:
        """A value of its own (not one that follows other keys)."""
        return not isinstance(self.value, Same | PerHead)


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    needs: tuple[Need, ...]


GPT2 = Family(
    "GPT-2",
    (
        Need("position", "learned"),
        Need("norm", "layernorm"),
        Need("mlp", "gelu"),
        Need("qk_norm", False),
        Need("n_kv_head", Same("n_head")),
        Need("head_dim", PerHead()),
        Need("tie_embeddings", True),
        Need("logit_softcap", 0),
    ),
)
# Llama, Qwen2 and Qwen3 differ only in qkv_bias and QK-norm (counterpart picks by them), which
# therefore are no requirement of the family; one model has one or neither.
LLAMA = Family(
    "Llama/Qwen2/Qwen3",
    (
        Need("position", "rope"),
        Need("norm", "rmsnorm"),
        Need("mlp", "swiglu"),
        Need("bias", False),
        Need("logit_softcap", 0),
    ),
)
FAMILIES = (GPT2, LLAMA)


def unmet(family: Family, config: GPTConfig) -> list[Need]:
    return [need for need in family.needs if not need.holds(config)]


def counterpart(config: GPTConfig) -> Counterpart:
    """The architecture other implementations know that equals `config`'s computation.

    Raises one ExportError line naming the options without an equivalent in the closest family
    (the one with the fewest unmet requirements)."""
    if not unmet(GPT2, config):
        return "gpt2"
    if not unmet(LLAMA, config):
        if config.qk_norm and config.qkv_bias:
            raise ExportError(
                "export: no equivalent in Hugging Face / llama.cpp for train.model.qkv_bias = true with "
                "qk_norm = true (Qwen2 has the biases, Qwen3 the QK-norm, none both)"
            )
        return "qwen3" if config.qk_norm else "qwen2" if config.qkv_bias else "llama"
    closest = min(FAMILIES, key=lambda family: len(unmet(family, config)))
    options = "; ".join(
        f"train.model.{need.key} = {option_value(config, need.key)} ({closest.name} needs {need.wanted})"
        for need in unmet(closest, config)
    )
    raise ExportError(
        f"export: no equivalent in Hugging Face / llama.cpp for {options}; exportable are GPT-2 "
        "(learned + layernorm + gelu) and Llama/Qwen2/Qwen3 (rope + rmsnorm + swiglu, no bias but qkv_bias)"
    )


def options_of(kind: Counterpart) -> dict[str, Any]:
    """The options of `kind` as our GPTConfig keys, for an importer (its sizes come from its files)."""
    family = GPT2 if kind == "gpt2" else LLAMA
    fixed = {need.key: need.value for need in family.needs if need.fixed}
    return fixed | ({} if family is GPT2 else {"qk_norm": kind == "qwen3", "qkv_bias": kind == "qwen2"})


def option_value(config: GPTConfig, key: str) -> str:
    """How the option reads in TOML (booleans lower case, strings quoted)."""
    return toml_text(getattr(config, key))


def toml_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
