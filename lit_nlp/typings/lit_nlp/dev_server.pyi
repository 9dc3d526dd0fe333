# Typed surface of lit_nlp.dev_server (lit-nlp 1.3) that ml_playground.analysis uses.
from collections.abc import Mapping
from typing import Any

from lit_nlp.api.dataset import Dataset
from lit_nlp.api.model import Model

class Server:
    def __init__(self, models: Mapping[str, Model], datasets: Mapping[str, Dataset], **kw: Any) -> None: ...
    def serve(self) -> Any: ...
