"""What one sparse 3x3 convolution is asked to do: `SparseConv`, the operands every implementation takes.

The JAX path, the Pallas kernel, the dense fallback and the dispatcher all take one `SparseConv` (a
pytree: its arrays are leaves, its layout and epilogue static), so the contract is written once, here,
and the dispatcher passes it between implementations unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from adadsr_jax.kernels.layout import PaddedLayout

Epilogue = Literal["relu", "residual", "masked"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseConv:
    """3x3 SAME conv of `src` computed at `rows[:count]` only, written into `dst` with a fused epilogue.

    src: padded flat [P, Cin]; dst: padded flat [P, Cout] (P = layout.rows; rows not in the list come
    back unchanged, so inactive pixels keep dst: the block's identity for the residual epilogue);
    rows: int32 [K] padded flat rows of active pixels (entries at positions >= count are ignored);
    count: int32 [] (0 <= count <= K); kernel: [3, 3, Cin, Cout] HWIO; bias: [Cout];
    coef: float [P] per-row factor of the residual/masked epilogues, indexed by padded flat row.
    Epilogues: "relu" relu(conv + b), a block's first conv; "residual" dst + coef * (conv + b), the
    second conv (coef = res_scale * soft mask); "masked" coef * (conv + b), RCAN's second conv, whose
    channel attention needs the masked residual. Accumulation in float32; the result has dst's dtype.
    """

    src: jax.Array
    dst: jax.Array
    rows: jax.Array
    count: jax.Array
    kernel: jax.Array
    bias: jax.Array
    layout: PaddedLayout = dataclasses.field(metadata={"static": True})
    epilogue: Epilogue = dataclasses.field(metadata={"static": True})
    coef: jax.Array | None = None

    @property
    def channels(self) -> tuple[int, int]:
        """(Cin, Cout)."""
        return self.kernel.shape[2], self.kernel.shape[3]

    def check(self) -> None:
        """Raise ValueError for operands no implementation can run."""
        cin, cout = self.channels
        if self.src.shape[1] != cin or self.dst.shape[1] != cout:
            shapes = f"src {self.src.shape}, dst {self.dst.shape}, kernel {self.kernel.shape}"
            raise ValueError(f"channel mismatch: {shapes}")
        if self.epilogue not in ("relu", "residual", "masked"):
            raise ValueError(f"unknown epilogue {self.epilogue!r}")
        if self.epilogue in ("residual", "masked") and self.coef is None:
            raise ValueError(f"the {self.epilogue!r} epilogue needs coef")


def apply_epilogue(
    y: jax.Array, epilogue: Epilogue, dst_rows: jax.Array | None, coef: jax.Array | None
) -> jax.Array:
    """The fused epilogue on conv outputs y [T, Cout] (bias already added), in float32; dst_rows [T, Cout]
    and coef [T] are the rows' destination values and factors (used by "residual" and "masked")."""
    if epilogue == "relu":
        return jax.nn.relu(y)
    if epilogue == "residual":
        return dst_rows + coef[:, None] * y
    if epilogue == "masked":
        return coef[:, None] * y
    raise ValueError(f"unknown epilogue {epilogue!r}")


def run_if(flag: jax.Array, fn, carry):
    """fn(carry) where the bool scalar `flag` is set, else carry, as a loop of 0 or 1 trips.

    Not a lax.cond: under a cond XLA copied the buffers the branches update in place in and out of them,
    at every call whether or not the branch ran (the tiled stack's dense blocks, the per-conv dense
    switch, RCAN's empty blocks; kernels/README.md). fn must read its large inputs through the carry (or
    an optimization_barrier with it): XLA hoists work on loop-invariant inputs out of the loop, and then
    runs it whatever the trip count.
    """
    return jax.lax.fori_loop(0, flag.astype(jnp.int32), lambda _, c: fn(c), carry)


def conv3x3_f32(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: Literal["SAME", "VALID"]
) -> jax.Array:
    """XLA's stride-1 3x3 convolution + bias, accumulated and returned in float32 (the dense fallback's
    and the tiled stack's convs): x [N, H, W, Cin], kernel [3, 3, Cin, Cout], bias [Cout] ->
    [N, H, W, Cout] (SAME, zero padding) or [N, H - 2, W - 2, Cout] (VALID)."""
    y = jax.lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(1, 1),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32,
    )
    return y + bias.astype(jnp.float32)
