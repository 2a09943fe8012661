"""Foundation model tests: shapes, eq. 4 masks, adapter semantics, and a float64 numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import adadsr_jax as ada
from adadsr_jax.models import Adapter, block_mask, pixel_shuffle
from adadsr_jax.models.layers import DIV2K_RGB_MEAN

# ---------------------------------------------------------------------------------------------------
# float64 numpy reference, written from the layer definitions (PyTorch semantics), independent of Flax.


def np_conv(x, kernel, bias):
    """3x3 (or kxk) cross-correlation with zero padding k//2. x [N,H,W,Ci], kernel [k,k,Ci,Co]."""
    k = kernel.shape[0]
    p = k // 2
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            out += xp[:, i : i + h, j : j + w, :] @ kernel[i, j]
    return out + bias


def np_pixel_shuffle(x, r):
    """PyTorch PixelShuffle by its definition, out[c, h*r+i, w*r+j] = in[c*r*r + i*r + j, h, w]."""
    n, h, w, crr = x.shape
    c = crr // (r * r)
    out = np.zeros((n, h * r, w * r, c), x.dtype)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                out[:, i::r, j::r, ch] = x[:, :, :, ch * r * r + i * r + j]
    return out


def np_mask(depth, block):
    """Eq. 4 for 1-based block index `block`."""
    return np.where(depth < block - 1, 0.0, np.where(depth > block, 1.0, depth - (block - 1)))


def np_adapter(p, z0, d, mode):
    d = np.asarray(d, np.float64).reshape(-1, 1, 1, 1)
    x = np_conv(z0 * d if mode == "weight" else z0, p["layer0"]["kernel"], p["layer0"]["bias"])
    for i in range(4):
        layer = p["layers"][i]
        x = np.where(x >= 0, x, layer["slope"][0] * x)
        x = np_conv(x, layer["conv"]["kernel"], layer["conv"]["bias"])
    x = np.maximum(x, 0)
    return x * d if mode == "output" else x


def np_forward(p, cfg, scale, lr, d):
    """Whole AdaDSR / EDSR / RCAN forward in float64. Returns sr and the depth map."""
    mean = np.array(DIV2K_RGB_MEAN)
    z0 = np_conv(lr - mean, p["head"]["kernel"], p["head"]["bias"])
    dmap = np_adapter(p["adapter"], z0, d, cfg.depth_input) if cfg.adaptive else None
    b = p["body"]
    x = z0
    if cfg.backbone == "edsr":
        for blk in range(cfg.num_blocks):
            r = np_conv(
                np.maximum(np_conv(x, b["layer0"]["kernel"][blk], b["layer0"]["bias"][blk]), 0),
                b["layer2"]["kernel"][blk],
                b["layer2"]["bias"][blk],
            )
            if dmap is not None:
                r = r * np_mask(dmap, blk + 1)
            x = x + cfg.res_scale * r
    else:
        for g in range(cfg.num_groups):
            h = x
            for blk in range(cfg.num_blocks):
                r = np_conv(
                    np.maximum(np_conv(h, b["layer0"]["kernel"][g, blk], b["layer0"]["bias"][g, blk]), 0),
                    b["layer2"]["kernel"][g, blk],
                    b["layer2"]["bias"][g, blk],
                )
                if dmap is not None:
                    r = r * np_mask(dmap[..., g : g + 1], blk + 1)
                pooled = r.mean(axis=(1, 2))
                hidden = np.maximum(pooled @ b["ca_down"]["kernel"][g, blk] + b["ca_down"]["bias"][g, blk], 0)
                att = 1 / (1 + np.exp(-(hidden @ b["ca_up"]["kernel"][g, blk] + b["ca_up"]["bias"][g, blk])))
                h = h + cfg.res_scale * r * att[:, None, None, :]
            x = x + np_conv(h, b["group_end"]["kernel"][g], b["group_end"]["bias"][g])
    z = z0 + np_conv(x, p["body_lastconv"]["kernel"], p["body_lastconv"]["bias"])
    factors = {2: [2], 3: [3], 4: [2, 2]}[scale]
    for i, r in enumerate(factors):
        z = np_pixel_shuffle(np_conv(z, p["up"]["convs"][i]["kernel"], p["up"]["convs"][i]["bias"]), r)
    sr = np_conv(z, p["tail"]["kernel"], p["tail"]["bias"]) + mean
    return sr, dmap


def float64_params(model):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def make_model(name, scale, seed=0, last_bias=None, **overrides):
    model = ada.create_model(name, scale=scale, rngs=nnx.Rngs(seed), **overrides)
    if last_bias is not None and model.adapter is not None:
        # Random init leaves most of relu(P) at zero; a positive bias gives depth maps that straddle
        # block boundaries, so fractional masks are exercised.
        conv = model.adapter.layers[3].conv
        conv.bias[...] = jnp.full_like(conv.bias[...], last_bias)
    return model


@pytest.fixture(scope="module")
def photo_lr():
    """A real photograph crop (skimage astronaut), 2 images, 12x10 LR, float32 0..255."""
    from skimage import data

    img = data.astronaut()[180:204:2, 200:220:2].astype(np.float32)
    return np.stack([img, img[::-1, ::-1]])


# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["edsr_tiny", "adaedsr_tiny", "rcan_tiny", "adarcan_tiny"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shapes(name, scale):
    # Shapes only: trace abstractly (the numeric tests below run every backbone and scale for real).
    model = nnx.eval_shape(lambda: ada.create_model(name, scale=scale, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    lr = jax.ShapeDtypeStruct((2, 7, 9, 3), jnp.float32)
    sr, aux = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, desired_depth=jnp.ones(2)), state, lr)
    groups = model.config.num_maps
    assert sr.shape == (2, 7 * scale, 9 * scale, 3)
    assert aux["depth_map"].shape == (2, 7, 9, groups)
    assert aux["mean_depth"].shape == (2,)


@pytest.mark.parametrize("block", [1, 2, 5, 32])
def test_eq4_masks_at_hand_picked_depths(block):
    depths = np.array(
        [0.0, 0.5, block - 1, block - 1 + 1e-3, block - 0.25, block, block + 0.3, 1e3], np.float32
    )
    expected = np.array([0.0, 0.0, 0.0, 1e-3, 0.75, 1.0, 1.0, 1.0])
    if block == 1:  # depth 0.5 sits inside block 1's ramp
        expected[1] = 0.5
    got = np.asarray(block_mask(jnp.asarray(depths), block - 1))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got, np_mask(depths.astype(np.float64), block), atol=1e-6)


def test_masks_are_nested():
    depth = jnp.linspace(0.0, 6.0, 97)
    masks = np.stack([np.asarray(block_mask(depth, i)) for i in range(6)])
    active = masks > 0
    assert np.all(active[1:] <= active[:-1])


def test_pixel_shuffle_matches_pytorch_definition():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5 * 9)).astype(np.float32)
    for r in (2, 3):
        c = x[..., : 5 * r * r]
        np.testing.assert_array_equal(np.asarray(pixel_shuffle(jnp.asarray(c), r)), np_pixel_shuffle(c, r))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_folded_upsampler_and_tail_equal_the_float64_reference(scale):
    """upsample_and_tail (the last upsampler conv and the tail folded into one LR conv, the border ring
    recomputed) against conv -> shuffle -> ... -> HR tail conv in float64, on maps down to 1 x 1."""
    from adadsr_jax.models.layers import Conv, Upsampler, upsample_and_tail

    up, tail = Upsampler(6, scale, rngs=nnx.Rngs(1)), Conv(6, 3, rngs=nnx.Rngs(2))
    folded = nnx.jit(upsample_and_tail)  # one compile per size: 5 s instead of 8 s op by op
    rng = np.random.default_rng(scale)
    for h, w in [(1, 1), (2, 5), (3, 3), (4, 7), (9, 6)]:
        x = rng.normal(size=(2, h, w, 6)).astype(np.float32)
        ref = x.astype(np.float64)
        for conv, r in zip(up.convs, up.factors, strict=True):
            ref = np_pixel_shuffle(np_conv(ref, np.float64(conv.kernel[...]), np.float64(conv.bias[...])), r)
        ref = np_conv(ref, np.float64(tail.kernel[...]), np.float64(tail.bias[...]))
        out = np.asarray(folded(up, tail, jnp.asarray(x)), np.float64)
        assert out.shape == ref.shape == (2, scale * h, scale * w, 3)
        assert np.abs(out - ref).max() < 1e-5 * np.abs(ref).max(), (h, w)


def test_depth_maps_nonnegative_and_output_scaling_is_linear(photo_lr):
    model = make_model("adaedsr_tiny", 2, last_bias=0.3)
    _, aux1 = model(jnp.asarray(photo_lr), desired_depth=1.5)
    _, aux2 = model(jnp.asarray(photo_lr), desired_depth=3.0)
    assert float(aux1["depth_map"].min()) >= 0.0
    assert float(aux1["depth_map"].max()) > 0.0
    np.testing.assert_allclose(np.asarray(aux2["depth_map"]), 2 * np.asarray(aux1["depth_map"]), rtol=1e-6)


def test_weight_scaling_scales_first_conv_weight_not_bias():
    rngs = nnx.Rngs(3)
    adapter = Adapter(8, 8, 2, depth_input="weight", rngs=rngs)
    z0 = jax.random.normal(jax.random.key(1), (2, 6, 5, 8)) * 30
    d = jnp.array([0.7, 4.0])
    got = adapter(z0, d)
    # Reference: per image, a copy of the adapter whose first-conv kernel (only) is multiplied by d.
    for i in range(2):
        scaled = nnx.clone(adapter)
        scaled.layer0.kernel[...] = adapter.layer0.kernel[...] * d[i]
        ref = scaled(z0[i : i + 1], jnp.ones((1,)))
        np.testing.assert_allclose(np.asarray(got[i : i + 1]), np.asarray(ref), rtol=1e-5, atol=1e-5)
    assert float(got.min()) >= 0.0
    # The bias is not scaled: at d = 0 the first conv sees zero input whatever z0 is, so the map equals
    # the adapter on zero features at d = 1 (it would be P(0 * (W z0 + b)) if the bias were scaled too).
    zero = adapter(z0, jnp.zeros((2,)))
    on_zero_features = adapter(jnp.zeros_like(z0), jnp.ones((2,)))
    np.testing.assert_allclose(np.asarray(zero), np.asarray(on_zero_features), rtol=1e-6, atol=1e-6)
    scaled_bias = nnx.clone(adapter)
    scaled_bias.layer0.bias[...] = jnp.zeros_like(adapter.layer0.bias[...])
    assert not np.allclose(np.asarray(zero), np.asarray(scaled_bias(jnp.zeros_like(z0), jnp.ones((2,)))))


def test_saturated_adaedsr_equals_plain_edsr(photo_lr):
    ada_model = make_model("adaedsr_tiny", 3, last_bias=50.0)
    plain = ada.create_model("edsr_tiny", scale=3, rngs=nnx.Rngs(1))
    # Copy every backbone weight; the plain model has no adapter.
    backbone = nnx.to_pure_dict(nnx.state(ada_model, nnx.Param))
    backbone.pop("adapter")
    nnx.update(plain, backbone)
    lr = jnp.asarray(photo_lr)
    sr_ada, aux = ada_model(lr, desired_depth=10.0)  # depth map >= 10 * relu(50 + ...) >> D everywhere
    assert float(aux["depth_map"].min()) >= ada_model.config.max_depth
    sr_plain, plain_aux = plain(lr)
    np.testing.assert_allclose(np.asarray(sr_ada), np.asarray(sr_plain), rtol=1e-6, atol=1e-4)
    # float32 mean of a constant map: exact up to summation rounding.
    np.testing.assert_allclose(np.asarray(aux["mean_depth"]), [3.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(plain_aux["mean_depth"]), [3.0, 3.0], rtol=1e-6)


@pytest.mark.parametrize("name", ["adaedsr_tiny", "adarcan_tiny"])
def test_zero_depth_map_makes_residual_stack_identity(name):
    model = make_model(name, 2)
    x = jax.random.normal(jax.random.key(0), (1, 5, 6, 8))
    zero = jnp.zeros((1, 5, 6, model.config.num_maps))
    out = model.body(x, zero)
    if model.config.backbone == "edsr":
        np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    else:  # RCAN groups still end with their dense conv: x + group_end(x) per group
        ref = np.asarray(x, np.float64)
        b = float64_params(model)["body"]
        for g in range(model.config.num_groups):
            ref = ref + np_conv(ref, b["group_end"]["kernel"][g], b["group_end"]["bias"][g])
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "scale"),
    [("edsr_tiny", 2), ("adaedsr_tiny", 3), ("rcan_tiny", 4), ("adarcan_tiny", 2), ("adarcan_tiny", 3)],
)
def test_forward_matches_float64_numpy_reference(name, scale, photo_lr):
    model = make_model(name, scale, seed=5, last_bias=0.8, res_scale=0.5 if "edsr" in name else 1.0)
    d = np.array([1.3, 2.6])
    sr, aux = model(jnp.asarray(photo_lr), desired_depth=jnp.asarray(d, jnp.float32))
    ref_sr, ref_dmap = np_forward(float64_params(model), model.config, scale, photo_lr.astype(np.float64), d)
    rel = np.abs(np.asarray(sr, np.float64) - ref_sr).max() / np.abs(ref_sr).max()
    assert rel < 1e-5, rel
    if ref_dmap is not None:
        # The maps straddle block boundaries, so fractional masks were exercised above.
        assert (ref_dmap % 1).mean() > 0
        assert np.abs(np.asarray(aux["depth_map"]) - ref_dmap).max() < 1e-5 * max(1.0, np.abs(ref_dmap).max())
        expected_mean = np.ceil(np.clip(ref_dmap, 0, model.config.max_depth)).mean(axis=(1, 2, 3))
        np.testing.assert_allclose(np.asarray(aux["mean_depth"]), expected_mean, rtol=1e-6)


def _count_params(shapes) -> int:
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))


def test_adapter_parameter_counts_match_release():
    abstract = {
        name: nnx.eval_shape(lambda name=name: ada.create_model(name, scale=2, rngs=nnx.Rngs(0)))
        for name in ("adaedsr", "adarcan")
    }
    assert _count_params(nnx.state(abstract["adaedsr"].adapter, nnx.Param)) == 738_949
    assert _count_params(nnx.state(abstract["adarcan"].adapter, nnx.Param)) == 153_486
    cfg = abstract["adaedsr"].config
    assert (cfg.num_blocks, cfg.num_features, cfg.adapter_features, cfg.depth_input) == (
        32,
        256,
        128,
        "output",
    )
    cfg = abstract["adarcan"].config
    assert (cfg.num_groups, cfg.num_blocks, cfg.num_features, cfg.num_maps) == (10, 20, 64, 10)
    assert cfg.depth_input == "weight"


def test_works_under_user_jit_and_grad(photo_lr):
    model = make_model("adarcan_tiny", 2, last_bias=0.5)
    graphdef, params = nnx.split(model)
    lr = jnp.asarray(photo_lr)
    hr = jnp.asarray(np.repeat(np.repeat(photo_lr, 2, axis=1), 2, axis=2))
    d = jnp.array([1.0, 1.5])

    @jax.jit
    def loss_fn(params, lr, hr, d):
        sr, aux = nnx.merge(graphdef, params)(lr, desired_depth=d)
        return ada.adadsr_loss(sr, hr, aux["depth_map"], d, 0.03)[0]

    grads = jax.grad(loss_fn)(params, lr, hr, d)
    g = nnx.to_pure_dict(grads)
    adapter_norm = sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g["adapter"]))
    backbone_norm = float(jnp.abs(g["body"]["layer0"]["kernel"]).sum())
    assert adapter_norm > 0 and np.isfinite(adapter_norm)
    assert backbone_norm > 0 and np.isfinite(backbone_norm)

    # Same value through nnx.jit on the module itself.
    @nnx.jit
    def module_loss(model, lr, hr, d):
        sr, aux = model(lr, desired_depth=d)
        return ada.adadsr_loss(sr, hr, aux["depth_map"], d, 0.03)[0]

    np.testing.assert_allclose(
        float(loss_fn(params, lr, hr, d)), float(module_loss(model, lr, hr, d)), rtol=1e-6
    )


def test_adaptive_model_requires_desired_depth():
    model = ada.create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="desired_depth"):
        model(jnp.zeros((1, 4, 4, 3)))


def test_unknown_preset_and_field_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'edsr9'"):
        ada.create_model("edsr9", scale=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_layers"):
        ada.get_model_config("edsr", num_layers=3)
    with pytest.raises(ValueError, match="scale must be 2, 3 or 4"):
        ada.create_model("edsr_tiny", scale=5, rngs=nnx.Rngs(0))
