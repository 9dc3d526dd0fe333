"""The device and autocast dtype every test of this layer trains and samples with.

The layer runs only where CUDA is (conftest.py skips it elsewhere). To rehearse a test's logic on
a machine without a GPU, set these to "cpu" / "float32" in a working copy and drop the skip in
conftest.py; never commit that.
"""

from __future__ import annotations

from typing import Literal

DEVICE: Literal["cuda", "cpu"] = "cuda"
DTYPE: Literal["bfloat16", "float32"] = "bfloat16"
