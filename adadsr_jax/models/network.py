"""The full super-resolution network: head, (adaptive) residual body, upsampler, tail."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adadsr_jax.masks import mean_executed_depth
from adadsr_jax.models.adapter import Adapter
from adadsr_jax.models.config import ModelConfig, get_model_config
from adadsr_jax.models.edsr import EDSRBody
from adadsr_jax.models.layers import DIV2K_RGB_MEAN, Conv, Upsampler, upsample_and_tail
from adadsr_jax.models.rcan import RCANBody


class AdaDSR(nnx.Module):
    """EDSR or RCAN with an optional AdaDSR adapter (AdaEDSR, AdaRCAN; plain EDSR/RCAN without one).

    Layout (names mirror the PyTorch release): MeanShift (a constant) -> head conv 3->C -> body
    (residual blocks, masked by the adapter's depth maps) -> body_lastconv -> long skip -> upsampler ->
    tail conv C->3 -> MeanShift back.
    """

    def __init__(self, config: ModelConfig, *, scale: int, rngs: nnx.Rngs, scan_unroll: bool | None = None):
        """scan_unroll: unroll the scans over residual blocks (None: on CPU only, where XLA runs their
        gradients far slower rolled; see layers.resolve_scan_unroll). A backend choice, not architecture:
        it changes neither the parameters nor the outputs."""
        self.config = config
        self.scale = scale
        c = config.num_features
        self.head = Conv(3, c, rngs=rngs)
        body = EDSRBody if config.backbone == "edsr" else RCANBody
        self.body = body(config, scan_unroll=scan_unroll, rngs=rngs)
        self.body_lastconv = Conv(c, c, rngs=rngs)
        self.up = Upsampler(c, scale, rngs=rngs)
        self.tail = Conv(c, 3, rngs=rngs)
        self.adapter = (
            Adapter(c, config.adapter_features, config.num_maps, depth_input=config.depth_input, rngs=rngs)
            if config.adaptive
            else None
        )

    def depth_map(self, z0: jax.Array, desired_depth: jax.Array | float | None) -> jax.Array | None:
        """Adapter output [N, h, w, G] for head features z0 [N, h, w, C]; None for a plain backbone."""
        if self.adapter is None:
            return None
        if desired_depth is None:
            raise ValueError("an adaptive model needs desired_depth (a scalar or one value per image)")
        d = jnp.broadcast_to(jnp.asarray(desired_depth, jnp.float32), (z0.shape[0],))
        return self.adapter(z0, d)

    def depth_map_of(self, lr: jax.Array, desired_depth: jax.Array | float | None) -> jax.Array:
        """The depth map [N, h, w, G] a forward on lr [N, h, w, 3] (0..255) would use, from the head conv
        and the adapter alone: the body, upsampler and tail do not run. It is the forward's
        aux["depth_map"] (the same ops), so a caller can cost a desired depth (budget searches) at the
        adapter's price. Plain backbones: D everywhere, as in the forward's aux."""
        if lr.ndim != 4 or lr.shape[-1] != 3:
            raise ValueError(f"lr must be [N, h, w, 3], got shape {lr.shape}")
        if self.adapter is None:
            n, h, w, _ = lr.shape
            return jnp.full((n, h, w, self.config.num_maps), float(self.config.max_depth), jnp.float32)
        return self.depth_map(self._head(lr), desired_depth)

    def _head(self, lr: jax.Array) -> jax.Array:
        """Head features z0 [N, h, w, C] of lr [N, h, w, 3] (0..255): mean removed, head conv."""
        return self.head(lr - jnp.asarray(DIV2K_RGB_MEAN, lr.dtype))

    def __call__(
        self,
        lr: jax.Array,
        *,
        desired_depth: jax.Array | float | None = None,
        sparse: bool = False,
        sparse_backend: str = "auto",
        use_adapter: bool = True,
        depth_map: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Super-resolve a batch.

        lr: [N, h, w, 3] float, 0..255. desired_depth: scalar or [N] (ignored by plain backbones).
        use_adapter=False runs the backbone alone, every mask one (the adapter is not called, so it gets
        no gradient): the training warm-up of a model trained from scratch.
        depth_map: [N, h, w, G], run with these maps instead of the adapter's (which is then not called;
        desired_depth is ignored), e.g. one constant depth k everywhere (benchmarks/uniform_depth.py).
        sparse: inference only; compute each residual block only at the pixels its mask needs
        (adadsr_jax.kernels; docs/adaptive_inference.md): same outputs as the dense call up to float
        rounding, less work when the depth map is below the maximum depth. sparse_backend: "auto"
        (on CPU the tiled path for EDSR stacks of <= 64 features, else the pixel-list JAX path, dense
        above the measured active fraction; on a GPU the dense masked stack whenever a block executes,
        since the sparse stack lost to it on an H200), "pallas", "jax", "tiles" (EDSR only) or "dense".
        Returns sr [N, s*h, s*w, 3] float (0..255, unclipped) and aux with
          "depth_map": [N, h, w, G] float32 (plain backbones: D everywhere),
          "mean_depth": [N], mean of ceil(clip(depth_map, 0, D)) as the release reports it.
        The multiply-accumulates a depth map costs are `adadsr_jax.macs.model_macs(model.config,
        model.scale, lr.shape, aux["depth_map"])`: counted by the callers that want them, not here.
        """
        if lr.ndim != 4 or lr.shape[-1] != 3:
            raise ValueError(f"lr must be [N, h, w, 3], got shape {lr.shape}")
        mean = jnp.asarray(DIV2K_RGB_MEAN, lr.dtype)
        z0 = self._head(lr)
        if depth_map is None and use_adapter:
            depth_map = self.depth_map(z0, desired_depth)
        body = self.body(z0, depth_map, sparse_backend=sparse_backend if sparse else None)
        z = z0 + self.body_lastconv(body)
        sr = upsample_and_tail(self.up, self.tail, z) + mean

        if depth_map is None:
            n, h, w, _ = lr.shape
            depth_map = jnp.full((n, h, w, self.config.num_maps), float(self.config.max_depth), jnp.float32)
        aux = {
            "depth_map": depth_map,
            "mean_depth": mean_executed_depth(depth_map, self.config.max_depth),
        }
        return sr, aux


def create_model(
    name: str, *, scale: int, rngs: nnx.Rngs, scan_unroll: bool | None = None, **overrides
) -> AdaDSR:
    """Build a preset by name ("edsr", "rcan", "adaedsr", "adarcan", and *_small / *_tiny variants).

    `overrides` replace ModelConfig fields, e.g. create_model("adaedsr", scale=2, rngs=nnx.Rngs(0),
    num_blocks=16).
    """
    return AdaDSR(get_model_config(name, **overrides), scale=scale, rngs=rngs, scan_unroll=scan_unroll)
