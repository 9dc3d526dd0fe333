"""Which architecture of Hugging Face transformers and llama.cpp computes exactly what our GPT computes.

Our options (`[train.model]`) combine freely; another implementation has a handful of fixed
architectures. `counterpart(config)` names the one whose computation equals ours, or raises one
`ExportError` line naming every option that has no equivalent, before anything is written:

  gpt2   learned positions, LayerNorm, GELU MLP, one KV head per query head, tied head
  llama  RoPE, RMSNorm, SwiGLU MLP, no biases (grouped-query attention and an untied head allowed)
  qwen3  llama plus QK-norm (RMSNorm over each head's queries and keys before RoPE)

None of them has a logit soft-cap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ml_playground.errors import ExportError
from ml_playground.model import GPTConfig

Counterpart = Literal["gpt2", "llama", "qwen3"]


@dataclass(frozen=True, slots=True)
class Need:
    """One option's value an architecture requires: `train.model.<key>` must satisfy `holds`."""

    key: str
    holds: Callable[[GPTConfig], bool]
    wanted: str  # what the architecture needs, for the error line


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    needs: tuple[Need, ...]


GPT2 = Family(
    "GPT-2",
    (
        Need("position", lambda c: c.position == "learned", "'learned'"),
        Need("norm", lambda c: c.norm == "layernorm", "'layernorm'"),
        Need("mlp", lambda c: c.mlp == "gelu", "'gelu'"),
        Need("qk_norm", lambda c: not c.qk_norm, "false"),
        Need("n_kv_head", lambda c: c.kv_heads == c.n_head, "n_head"),
        Need("tie_embeddings", lambda c: c.tie_embeddings, "true"),
        Need("logit_softcap", lambda c: c.logit_softcap == 0.0, "0"),
    ),
)
# Llama and Qwen3 differ only in QK-norm, which therefore is no requirement of the family.
LLAMA = Family(
    "Llama/Qwen3",
    (
        Need("position", lambda c: c.position == "rope", "'rope'"),
        Need("norm", lambda c: c.norm == "rmsnorm", "'rmsnorm'"),
        Need("mlp", lambda c: c.mlp == "swiglu", "'swiglu'"),
        Need("bias", lambda c: not c.bias, "false"),
        Need("logit_softcap", lambda c: c.logit_softcap == 0.0, "0"),
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
        return "qwen3" if config.qk_norm else "llama"
    closest = min(FAMILIES, key=lambda family: len(unmet(family, config)))
    options = "; ".join(
        f"train.model.{need.key} = {option_value(config, need.key)} ({closest.name} needs {need.wanted})"
        for need in unmet(closest, config)
    )
    raise ExportError(
        f"export: no equivalent in Hugging Face / llama.cpp for {options}; exportable are GPT-2 "
        "(learned + layernorm + gelu) and Llama/Qwen3 (rope + rmsnorm + swiglu, no bias)"
    )


def option_value(config: GPTConfig, key: str) -> str:
    """How the option reads in TOML (booleans lower case, strings quoted)."""
    value: object = config.kv_heads if key == "n_kv_head" else getattr(config, key)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
