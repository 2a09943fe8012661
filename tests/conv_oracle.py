"""Independent float64 numpy oracles of one 3x3 convolution and of a sparse conv's contract (SparseConv),
shared by tests/test_kernels.py and the GPU check (benchmarks/gpu_check.py)."""

import numpy as np


def conv3x3_same_f64(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Independent oracle: SAME 3x3 conv in float64 by explicit shifted sums. x [N,H,W,Ci], k HWIO."""
    n, h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((n, h, w, k.shape[3]))
    for dy in range(3):
        for dx in range(3):
            y += xp[:, dy : dy + h, dx : dx + w, :] @ k[dy, dx].astype(np.float64)
    return y + b.astype(np.float64)


def reference(x, dst, mask, k, b, epilogue, coef):
    """Dense conv, epilogue ("relu", "residual": dst + coef * conv, "masked": coef * conv), kept where
    mask [N, H, W] is set; dst elsewhere. All numpy float64."""
    y = conv3x3_same_f64(x, k, b)
    if epilogue == "relu":
        out = np.maximum(y, 0)
    elif epilogue == "residual":
        out = dst + coef[..., None] * y
    else:
        out = coef[..., None] * y
    return np.where(mask[..., None], out, dst)
