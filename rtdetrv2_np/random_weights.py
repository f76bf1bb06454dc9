"""Deterministic random weights that behave like a trained network, for tests, recordings and offline teaching.

Why not transformers' default initialisation: it zeroes the sampling offsets and attention-weight projections,
gives BatchNorm scales of 0.01 and puts one prior bias on every class, so the encoder's 8,400 class scores come out
nearly tied; the top-300 query selection then flips under rounding differences of 1e-7 and any comparison between
two implementations is meaningless. Here instead (per tensor, from its name and shape):

    conv weight [C_out, C_in, KH, KW]   N(0, 1 / fan_in)      LeCun scaling; with He's 2 / fan_in the residual and
                                                              CSP sums grow activations to ~500 by the encoder
    linear weight [C_out, C_in]         N(0, 1 / fan_in)      keeps activations O(1) through the transformer
    bias                                N(0, 0.02^2)          small, as after training
    norm weight (BN, LayerNorm)         1 + N(0, 0.1^2)       scales around 1
    BN running_mean                     N(0, 0.1^2)
    BN running_var                      U(0.5, 1.5)           variances around 1
    n_points_scale [K]                  1 / K_l, exactly      a constant buffer, not a weight

Each tensor gets its own generator seeded from (seed, crc32(name)), so the weights do not depend on the order in
which tensors are generated or on which other tensors exist. The same function is used by
tools/record_reference.py (to build the PyTorch reference model) and by the tests (to rebuild the same weights
without committing 80-300 MB checkpoints).
"""

import zlib

import numpy as np

from .model.deformable_attention import points_scale


def random_tensor(name, shape, seed=0):
    """One float32 tensor for the hub-named tensor `name`, from the table in the module docstring."""
    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(name.encode())]))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        a = rng.uniform(0.5, 1.5, shape)
    elif leaf == "running_mean":
        a = rng.normal(0.0, 0.1, shape)
    elif leaf == "bias":
        a = rng.normal(0.0, 0.02, shape)
    elif leaf == "weight" and len(shape) == 1:              # BatchNorm / LayerNorm scale
        a = 1.0 + rng.normal(0.0, 0.1, shape)
    elif leaf == "weight" and len(shape) == 4:              # convolution
        fan_in = shape[1] * shape[2] * shape[3]
        a = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
    elif leaf == "weight" and len(shape) == 2:              # linear, embedding
        a = rng.normal(0.0, np.sqrt(1.0 / shape[1]), shape)
    else:
        raise ValueError(f"random_tensor: no rule for {name} {shape}")
    return a.astype(np.float32)


def random_params(shapes, seed=0, n_points=None):
    """{name: float32 array} for every name in `shapes` ({name: shape}, e.g. weights.expected_shapes(cfg)).

    n_points: the per-level point counts, to fill the `n_points_scale` buffers with 1/K_l (required if present).
    """
    out = {}
    for name, shape in shapes.items():
        if name.endswith("n_points_scale"):
            out[name] = points_scale(n_points)
        else:
            out[name] = random_tensor(name, tuple(shape), seed)
    return out


def random_model(variant="r18vd", seed=0, method=None, **overrides):
    """A Model of a published architecture filled with random_params: offline stand-in for the real weights.

    It computes exactly what the trained architecture computes, but it finds no objects. 80 classes named as COCO's.
    """
    from .loading import build_model
    from .model.config import variant_config
    from .postprocess import COCO_NAMES
    from .weights import expected_shapes
    cfg = variant_config(variant, **{"id2label": dict(enumerate(COCO_NAMES)), **overrides})
    return build_model(cfg, random_params(expected_shapes(cfg), seed, cfg.n_points), method,
                       source=f"random weights ({variant}, seed {seed})")
