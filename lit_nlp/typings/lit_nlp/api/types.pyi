# Typed surface of lit_nlp.api.types (lit-nlp 1.3) that ml_playground.analysis uses.
from collections.abc import Mapping, Sequence
from typing import Any

JsonDict = Mapping[str, Any]

class LitType:
    required: bool

Spec = dict[str, LitType]

class StringLitType(LitType):
    def __init__(self, *, required: bool = ..., default: str = ...) -> None: ...

class TextSegment(StringLitType): ...

class GeneratedText(TextSegment):
    def __init__(self, *, required: bool = ..., default: str = ..., parent: str | None = ...) -> None: ...

class CategoryLabel(StringLitType):
    def __init__(self, *, required: bool = ..., default: str = ..., vocab: Sequence[str] | None = ...) -> None: ...

class Tokens(LitType):
    def __init__(
        self, *, required: bool = ..., parent: str | None = ..., mask_token: str | None = ..., token_prefix: str | None = ...
    ) -> None: ...

class TokenTopKPreds(LitType):
    def __init__(self, *, required: bool = ..., align: str, parent: str | None = ...) -> None: ...

class TokenScores(LitType):
    def __init__(self, *, required: bool = ..., align: str) -> None: ...

class Scalar(LitType):
    def __init__(
        self, *, required: bool = ..., min_val: float = ..., max_val: float = ..., default: float = ..., step: float = ...
    ) -> None: ...

class Embeddings(LitType):
    def __init__(self, *, required: bool = ...) -> None: ...

class AttentionHeads(LitType):
    def __init__(self, *, required: bool = ..., align_in: str, align_out: str) -> None: ...
