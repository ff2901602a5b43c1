"""The ONE float64 Newton–Schulz reference of the test suite (NumPy, a plain loop over the formula, written from
docs/optimizers.md §5 and not from optimizers/newton_schulz.py). Test modules import it as
`from reference import ns_ref` (pytest's default "prepend" import mode puts tests/, which has no __init__.py, on
sys.path)."""

import numpy as np

KELLERJORDAN = (3.4445, -4.7750, 2.0315)


def ns_ref(G, steps=5, coeffs=None, scale=1.0, eps=1e-7):
    """NS_steps(G) in float64: transpose if tall, X ← X / (‖X‖_F·scale + eps), then `steps` times
    A = X Xᵀ, X ← a·X + (b·A + c·A²)·X. `coeffs`: None for KellerJordan's (a, b, c) at every step, or a list of
    per-step tuples whose last one repeats (Polar Express, with scale = 1.01)."""
    X = np.array(G, dtype=np.float64)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / (np.linalg.norm(X) * scale + eps)
    for i in range(steps):
        a, b, c = coeffs[min(i, len(coeffs) - 1)] if coeffs else KELLERJORDAN
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X
