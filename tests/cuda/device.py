"""The device and autocast dtype every test of this layer trains and samples with, and whether the
layer runs here.

The layer runs only where CUDA is (conftest.py skips it elsewhere). To rehearse a test's logic on
a machine without a GPU, set these to "cpu" / "float32" in a working copy and drop the skip in
conftest.py; never commit that.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

DEVICE: Literal["cuda", "cpu"] = "cuda"
DTYPE: Literal["bfloat16", "float32"] = "bfloat16"

REQUIRE_CUDA = "ML_PLAYGROUND_REQUIRE_CUDA"


def layer_runs() -> bool:
    """Whether the layer's tests run here: CUDA is usable, or required (then they fail without it)."""
    return torch.cuda.is_available() or os.environ.get(REQUIRE_CUDA) == "1"
