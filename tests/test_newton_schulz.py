"""Newton–Schulz: scalar map, singular-value range, invariances, batching, the spec's test vectors, FLOPs."""

import numpy as np
import pytest
import torch
from reference import ns_ref

from optimizers.newton_schulz import POLAR_EXPRESS, newton_schulz, ns_matmul_flops, orthogonalize


def well_conditioned(m, n, seed, smin=1.0, smax=10.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    s = torch.linspace(smin, smax, r, dtype=torch.float64)
    return (U * s) @ V.T


def test_scalar_map_quintic():
    # A 1×1 matrix is its own singular value: one step maps 1 to f(1) = a + b + c = 0.701.
    one = torch.ones(1, 1, dtype=torch.float64)
    assert newton_schulz(one, steps=1).item() == pytest.approx(0.701, abs=1e-6)
    # Spec §9.1 five-step trajectories of x0 = 1 and x0 = 0.1 (the latter as a 2×2 diag with σ ratio chosen so that
    # the normalised σ is 0.1: diag(0.1, sqrt(0.99))).
    assert newton_schulz(one, steps=5).item() == pytest.approx(0.696436, abs=1e-5)
    d = torch.diag(torch.tensor([0.1, 0.99 ** 0.5], dtype=torch.float64))
    assert newton_schulz(d, steps=5)[0, 0].item() == pytest.approx(0.712120, abs=1e-5)


def test_spec_vectors():
    # Spec §9.1: NS(diag(3, 2, 1, 0.5)) and §9.2: NS5 of a 2×3 matrix (recomputed there in float64).
    D = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    out = torch.diagonal(newton_schulz(D, steps=5))
    np.testing.assert_allclose(out.numpy(), [1.10993486, 0.68701164, 0.68781571, 0.69600920], atol=1e-6)
    G0 = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], dtype=torch.float64)
    expected = [[0.31677536, 0.64404385, -0.01573969], [0.16363424, -0.34825473, 1.01328483]]
    np.testing.assert_allclose(newton_schulz(G0, steps=5).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(newton_schulz(G0.T, steps=5).numpy(), np.array(expected).T, atol=1e-6)


@pytest.mark.parametrize("shape", [(64, 64), (48, 96), (96, 48)])
@pytest.mark.parametrize("dtype,slack", [(torch.float64, 0.0), (torch.float32, 1e-4), (torch.bfloat16, 0.02)])
def test_singular_values_in_range(shape, dtype, slack):
    G = well_conditioned(*shape, seed=1)
    O = newton_schulz(G.to(dtype), steps=5).double()
    s = torch.linalg.svdvals(O)
    assert s.min() >= 0.68 - slack and s.max() <= 1.21 + slack, (s.min(), s.max())
    # and it really changed the spectrum: the input's σ ratio is 10, the output's is under 1.8
    assert s.max() / s.min() < 1.8


def test_polar_express_range_and_reference():
    G = well_conditioned(40, 72, seed=2, smin=1.0, smax=100.0)
    O = newton_schulz(G, steps=5, coefficients="polar_express")
    s = torch.linalg.svdvals(O)
    # docs/optimizers.md §9.3: image of [1e-3, 1] after 5 steps is [0.8401, 1.1236]
    assert s.min() >= 0.84 and s.max() <= 1.1237, (s.min(), s.max())
    # the coefficients with the 1.01 safety factor (docs/optimizers.md §9.3, first tuple and the last one that repeats)
    assert POLAR_EXPRESS[0] == pytest.approx((8.205160414005574, -22.901934987056048, 16.460724910180314), rel=1e-12)
    assert POLAR_EXPRESS[-1] == (1.875, -1.25, 0.375)
    ref = ns_ref(G.numpy(), steps=10, coeffs=POLAR_EXPRESS, scale=1.01)
    np.testing.assert_allclose(newton_schulz(G, steps=10, coefficients="polar_express").numpy(), ref, atol=1e-10)


def test_matches_reference_formula_and_invariances():
    g = torch.Generator().manual_seed(3)
    G = torch.randn(12, 30, generator=g, dtype=torch.float64)
    O = newton_schulz(G, steps=5)
    np.testing.assert_allclose(O.numpy(), ns_ref(G.numpy()), atol=1e-10)
    # NS(cG) = NS(G) for c > 0 (up to the 1e-7 eps in the normalisation)
    torch.testing.assert_close(newton_schulz(37.5 * G, steps=5), O, atol=1e-7, rtol=0)
    # NS(Gᵀ) = NS(G)ᵀ
    torch.testing.assert_close(newton_schulz(G.T, steps=5), O.T, atol=1e-12, rtol=0)


def test_batched_equals_per_matrix():
    g = torch.Generator().manual_seed(4)
    stack = torch.randn(5, 16, 40, generator=g)
    batched = newton_schulz(stack, steps=5)
    for i in range(5):
        torch.testing.assert_close(batched[i], newton_schulz(stack[i], steps=5), atol=1e-5, rtol=0)
    # orthogonalize() batches tall and wide matrices of the same (r, c) together and restores their orientation
    mats = [torch.randn(16, 40, generator=g), torch.randn(40, 16, generator=g), torch.randn(16, 16, generator=g),
            torch.randn(40, 16, generator=g)]
    outs = orthogonalize(mats, steps=5, ns_dtype="float32")
    for m, o in zip(mats, outs):
        assert o.shape == m.shape
        torch.testing.assert_close(o, newton_schulz(m, steps=5), atol=1e-5, rtol=0)


def test_auto_dtype_keeps_cpu_precision():
    x = torch.randn(8, 8, dtype=torch.float64)
    assert orthogonalize([x])[0].dtype == torch.float64
    assert orthogonalize([x], ns_dtype="bfloat16")[0].dtype == torch.bfloat16


def test_ns_flops_formula():
    # docs/optimizers.md §5.5 table and GPT-2 124M total (12 layers × {c_attn 2304×768, attn.c_proj 768², c_fc 3072×768,
    # mlp.c_proj 768×3072}) = 1.522e12
    assert ns_matmul_flops(768, 768, 5) == 5 * (4 * 768**3 + 2 * 768**3)
    assert ns_matmul_flops(768, 768, 5) == pytest.approx(1.359e10, rel=1e-3)
    assert ns_matmul_flops(2304, 768, 5) == pytest.approx(3.171e10, rel=1e-3)
    assert ns_matmul_flops(3072, 768, 5) == ns_matmul_flops(768, 3072, 5) == pytest.approx(4.077e10, rel=1e-3)
    assert ns_matmul_flops(1024, 4096, 5) == pytest.approx(9.664e10, rel=1e-3)
    total = 12 * sum(ns_matmul_flops(m, n, 5) for m, n in [(2304, 768), (768, 768), (3072, 768), (768, 3072)])
    assert total == pytest.approx(1.52203e12, rel=1e-5)


def test_track3_coefficients_are_the_tracks_cubic_iteration():
    """ns_coefficients = "track3": modded-nanogpt Track 3's 12 iterations of (2, -1.5, 0.5), compared with a plain
    float64 loop of the track's zeropower_via_newtonschulz5 (normalised by the Frobenius norm, wide orientation)."""
    import torch

    from optimizers.newton_schulz import orthogonalize

    g = torch.Generator().manual_seed(3)
    for shape in ((8, 5), (5, 8), (6, 6)):
        G = torch.randn(*shape, generator=g, dtype=torch.float64)
        X = G.T if shape[0] > shape[1] else G
        X = X / (X.norm() + 1e-7)
        for _ in range(12):
            A = X @ X.T
            X = 2.0 * X + (-1.5 * A + 0.5 * A @ A) @ X
        ref = X.T if shape[0] > shape[1] else X
        out = orthogonalize([G], 12, "track3", "float64")[0]
        assert torch.allclose(out, ref, atol=1e-6), shape
