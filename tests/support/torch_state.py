"""Process-wide torch settings a test can change and leave behind: TF32, the float32 matmul
precision, the default dtype, deterministic algorithms, cuDNN's autotuner, intra-op threads and
grad mode. `TorchState.now()` reads them; `restore()` puts them back, so tests pass in any order
(a CUDA runtime turns TF32 on for the whole process, and a later test would see it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class TorchState:
    cuda_matmul_tf32: bool
    cudnn_tf32: bool
    float32_matmul_precision: str
    default_dtype: torch.dtype
    deterministic: bool
    deterministic_warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    threads: int
    grad_enabled: bool

    @classmethod
    def now(cls) -> TorchState:
        return cls(
            cuda_matmul_tf32=bool(torch.backends.cuda.matmul.allow_tf32),  # typed bool | str in torch's stubs
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
            default_dtype=torch.get_default_dtype(),
            deterministic=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_deterministic=torch.backends.cudnn.deterministic,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            threads=torch.get_num_threads(),
            grad_enabled=torch.is_grad_enabled(),
        )

    def restore(self) -> None:
        if TorchState.now() == self:
            return
        # The generic precision first: it also sets the per-backend ones, which the flags then refine.
        torch.set_float32_matmul_precision(self.float32_matmul_precision)
        torch.backends.cuda.matmul.allow_tf32 = self.cuda_matmul_tf32
        torch.backends.cudnn.allow_tf32 = self.cudnn_tf32
        torch.set_default_dtype(self.default_dtype)
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        torch.set_grad_enabled(self.grad_enabled)
