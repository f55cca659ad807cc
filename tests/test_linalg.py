"""Closed-form checks of the method's math (olica_prune.method.linalg)."""

import pytest
import torch

from olica_prune.method.linalg import (
    damped_cholesky,
    ffn_contribution_scores,
    fit_calibration,
    ridge_solve,
    lowrank_factorize,
    lowrank_pays_off,
    thin_svd,
    truncate_vo,
    vo_basis,
)

torch.manual_seed(0)


def _cov(d, n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 2, d, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    return x, x.T @ x / n


def test_lowrank_full_rank_is_exact():
    x, cov = _cov(24)
    w = torch.randn(16, 24, dtype=torch.float64)
    lr = lowrank_factorize(w, damped_cholesky(cov, damp=0), 16)
    assert torch.allclose(lr.b @ lr.a, w, atol=1e-9)
    assert lr.energy_kept == pytest.approx(1.0)


@pytest.mark.parametrize("rank", [1, 4, 9])
def test_lowrank_error_is_the_dropped_spectrum(rank):
    """E‖(W − BA)x‖² equals the dropped squared singular values of W L (Eckart–Young)."""
    x, cov = _cov(20)
    chol = damped_cholesky(cov, damp=0)
    w = torch.randn(12, 20, dtype=torch.float64)
    lr = lowrank_factorize(w, chol, rank)
    err = ((x @ (w - lr.b @ lr.a).T) ** 2).sum(1).mean()
    s = torch.linalg.svdvals(w @ chol)
    assert err == pytest.approx(float((s[rank:] ** 2).sum()), rel=1e-8)
    # and it beats the plain (activation-blind) SVD of W
    u, sw, vt = torch.linalg.svd(w, full_matrices=False)
    plain = u[:, :rank] * sw[:rank] @ vt[:rank]
    assert err <= ((x @ (w - plain).T) ** 2).sum(1).mean() + 1e-12


@pytest.mark.parametrize("shape", [(12, 40), (40, 12), (30, 30)])
def test_thin_svd_via_gram_matches_the_svd(shape):
    """The CUDA path (SVD from eigh of the smaller Gram) gives the same factors as
    torch's SVD, up to signs, on a spectrum spanning 1e3 with a rank deficiency."""
    g = torch.Generator().manual_seed(3)
    p, q = shape
    r = min(p, q)
    left = torch.linalg.qr(torch.randn(p, r, generator=g, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(q, r, generator=g, dtype=torch.float64))[0]
    sv = torch.logspace(1, -2, r, dtype=torch.float64)
    sv[-2:] = 0  # rank deficient: two exact zeros
    m = left * sv @ right.T
    u, s, vt = thin_svd(m, via_gram=True)
    u0, s0, vt0 = torch.linalg.svd(m, full_matrices=False)
    assert u.shape == u0.shape and s.shape == s0.shape and vt.shape == vt0.shape
    assert torch.allclose(s, s0, atol=1e-9)  # the zeros are exact zeros (below the floor), not ~1e-7
    k = r - 2  # the nonzero part: vectors equal up to sign, the product is m
    sign = torch.sign((u[:, :k] * u0[:, :k]).sum(0))
    assert torch.allclose(u[:, :k] * sign, u0[:, :k], atol=1e-8)
    assert torch.allclose(vt[:k] * sign[:, None], vt0[:k], atol=1e-8)
    assert torch.allclose(u * s @ vt, m, atol=1e-10)
    # the side taken from eigh stays orthonormal; the other side's null vectors are zero, not noise
    full = u if p <= q else vt.T
    assert torch.allclose(full.T @ full, torch.eye(r, dtype=torch.float64), atol=1e-10)
    other = vt.T if p <= q else u
    assert other[:, k:].abs().max() == 0


def test_lowrank_factorize_via_gram_equals_svd():
    """lowrank_factorize takes its SVD from the Gram matrix: product and kept
    energy equal those from torch's SVD."""
    import olica_prune.method.linalg as la

    x, cov = _cov(48)
    chol = damped_cholesky(cov, damp=0)
    w = torch.randn(32, 48, dtype=torch.float64)
    got = lowrank_factorize(w, chol, 10)
    orig = la.thin_svd
    la.thin_svd = lambda m: orig(m, via_gram=False)
    try:
        ref = lowrank_factorize(w, chol, 10)
    finally:
        la.thin_svd = orig
    assert torch.allclose(got.b @ got.a, ref.b @ ref.a, atol=1e-9)
    assert got.energy_kept == pytest.approx(ref.energy_kept, rel=1e-12)


def test_lowrank_pays_off_rule():
    assert lowrank_pays_off(287, 576, 576)
    assert not lowrank_pays_off(288, 576, 576)


def _gqa_head(e=8, d=20, group=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    wv = torch.randn(e, d, generator=g, dtype=torch.float64)
    wo = [torch.randn(d, e, generator=g, dtype=torch.float64) * (1 + i) for i in range(group)]
    return wv, wo


@pytest.mark.parametrize("method", ["fast", "exact", "separate", "none"])
def test_vo_full_width_keeps_every_product(method):
    """A change of basis at full width leaves W_o^(i) W_v unchanged for every head of the group."""
    _, cov = _cov(20)
    wv, wo = _gqa_head()
    bias = torch.randn(8, dtype=torch.float64)
    basis = vo_basis(wv, wo, damped_cholesky(cov), method, v_bias=bias)
    nv, nb, no = truncate_vo(basis, wv, wo, 8, v_bias=bias)
    for i in range(3):
        assert torch.allclose(no[i] @ nv, wo[i] @ wv, atol=1e-9)
        assert torch.allclose(no[i] @ nb, wo[i] @ bias, atol=1e-9)


def _group_error(wv, wo, nv, no, chol):
    return sum(float(((a @ wv - b @ nv) @ chol).pow(2).sum()) for a, b in zip(wo, no))


@pytest.mark.parametrize("k", [2, 5])
def test_exact_ond_is_the_best_rank_k_of_the_group_product(k):
    """Truncated exact OND error = dropped squared singular values of the stacked weighted
    product [W_o^(i) W_v L]_i, and no other method does better."""
    _, cov = _cov(20)
    chol = damped_cholesky(cov)
    wv, wo = _gqa_head()
    product = torch.cat([w @ wv @ chol for w in wo], dim=0)
    s = torch.linalg.svdvals(product)
    errs = {}
    for method in ("exact", "fast", "separate", "none"):
        basis = vo_basis(wv, wo, chol, method)
        nv, _, no = truncate_vo(basis, wv, wo, k)
        errs[method] = _group_error(wv, wo, nv, no, chol)
    assert errs["exact"] == pytest.approx(float((s[k:] ** 2).sum()), rel=1e-7)
    assert errs["exact"] <= min(errs.values()) + 1e-9
    assert errs["fast"] < errs["none"]


def test_exact_strengths_are_singular_values():
    _, cov = _cov(20)
    chol = damped_cholesky(cov)
    wv, wo = _gqa_head()
    basis = vo_basis(wv, wo, chol, "exact")
    product = torch.cat([w @ wv @ chol for w in wo], dim=0)
    assert torch.allclose(basis.strength, torch.linalg.svdvals(product)[:8], rtol=1e-8)


def test_ffn_contribution_scores_closed_form():
    h_sq = torch.tensor([4.0, 1.0, 0.0])
    w_down = torch.tensor([[3.0, 0.0, 1.0], [4.0, 2.0, 1.0]])
    assert torch.allclose(ffn_contribution_scores(h_sq, w_down), torch.tensor([10.0, 2.0, 0.0], dtype=torch.float64))


def _stats(x, e):
    return x.T @ x, x.T @ e, (e**2).sum(0)


@pytest.mark.parametrize("weighted", [True, False])
def test_calibration_recovers_an_exact_low_rank_map(weighted):
    """If e = M x with rank(M) = r, the rank-r branch reproduces it."""
    g = torch.Generator().manual_seed(3)
    d, r, n = 16, 3, 3000
    m = torch.randn(d, r, generator=g, dtype=torch.float64) @ torch.randn(r, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    e = x @ m.T
    cal = fit_calibration(*_stats(x, e), r, ridge=1e-10, weighted=weighted)
    assert torch.allclose(cal.b @ cal.a, m, atol=1e-6)
    assert cal.explained == pytest.approx(1.0, abs=1e-8)


def test_calibration_full_rank_unweighted_is_the_ridge_solution():
    g = torch.Generator().manual_seed(4)
    d, n, lam_rel = 10, 500, 1e-2
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    e = torch.randn(n, d, generator=g, dtype=torch.float64) + x @ torch.randn(d, d, generator=g, dtype=torch.float64)
    xtx, xte, ete = _stats(x, e)
    cal = fit_calibration(xtx, xte, ete, d, ridge=lam_rel, weighted=False)
    lam = lam_rel * xtx.diagonal() + 1e-10 * xtx.diagonal().mean()  # Jacobi damping
    ridge = torch.linalg.solve(xtx + torch.diag(lam), xte)  # e ≈ ridgeᵀ x
    assert torch.allclose(cal.b @ cal.a, ridge.T, atol=1e-9)
    # the reported remaining energy is the real one
    resid = e - x @ (cal.b @ cal.a).T
    assert cal.remaining_energy == pytest.approx(float((resid**2).sum()), rel=1e-9)


def test_calibration_truncation_keeps_the_predictable_part():
    """Noise dims (unpredictable) must not take rank from a predictable direction."""
    g = torch.Generator().manual_seed(5)
    d, n = 12, 4000
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    e = torch.zeros(n, d, dtype=torch.float64)
    e[:, 0] = 0.5 * x[:, 1]  # predictable, small
    e[:, 5:] = 3 * torch.randn(n, d - 5, generator=g, dtype=torch.float64)  # loud noise
    cal = fit_calibration(*_stats(x, e), 1, ridge=1e-6)
    ba = cal.b @ cal.a
    assert ba[0, 1] == pytest.approx(0.5, abs=0.05)  # 0.520


def test_cholesky_damps_rank_deficient_covariance():
    cov = torch.zeros(4, 4, dtype=torch.float64)
    cov[0, 0] = 1.0
    chol = damped_cholesky(cov)
    assert torch.isfinite(chol).all() and (chol.diagonal() > 0).all()


def _weighted_loss(x, e, m, weights):
    """Σ_t (e_t − M x_t)ᵀ D (e_t − M x_t) with D = diag(weights)."""
    resid = e - x @ m.T
    return float(((resid**2) * weights).sum())


def test_weighted_calibration_truncation_is_the_weighted_reduced_rank_solution():
    """Strongly unequal R² across output dims: the branch must be the minimiser of
    the R²-weighted error among rank-r maps (closed form via an SVD of the scaled
    fitted values, computed independently of fit_calibration's eigh)."""
    g = torch.Generator().manual_seed(11)
    d, r, n = 12, 3, 6000
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    m_true = torch.randn(d, d, generator=g, dtype=torch.float64)
    noise_scale = torch.logspace(-2, 1.5, d, dtype=torch.float64)  # R² from ~1 down to ~0.01
    e = x @ m_true.T + torch.randn(n, d, generator=g, dtype=torch.float64) * noise_scale * 3
    xtx, xte, ete = _stats(x, e)
    ridge = 1e-6
    cal = fit_calibration(xtx, xte, ete, r, ridge=ridge, weighted=True)
    # Independent reference: full ridge fit, its R², then the top-r right singular
    # vectors of the D^½-scaled fitted values X Ŵ D^½.
    w = torch.linalg.solve(xtx + torch.diag(ridge * xtx.diagonal() + 1e-10 * xtx.diagonal().mean()), xte)
    fitted_vals = x @ w
    r2 = ((fitted_vals**2).sum(0) / ete).clamp(1e-3, 1.0)
    assert r2.max() / r2.min() > 50  # the weights really are unequal
    _, _, vt = torch.linalg.svd(fitted_vals * r2.sqrt(), full_matrices=False)
    v = vt[:r].T
    m_ref = (v / r2.sqrt()[:, None]) @ (v.T * r2.sqrt()) @ w.T
    m = cal.b @ cal.a
    assert torch.allclose(m, m_ref, atol=1e-8, rtol=1e-6)
    # The previous (inconsistent) factorisation D^½ V Vᵀ D^-½ Ŵᵀ is clearly worse
    # in the norm the truncation is meant to minimise, and in the plain norm here.
    m_old = (r2.sqrt()[:, None] * v) @ (v.T / r2.sqrt()) @ w.T
    assert _weighted_loss(x, e, m, r2) < 0.9 * _weighted_loss(x, e, m_old, r2)
    assert cal.explained > 1 - _weighted_loss(x, e, m_old, torch.ones(d, dtype=torch.float64)) / float(ete.sum())


def test_ridge_scale_is_per_direction_with_an_outlier_channel():
    """One input channel 1000x louder than the rest (a massive activation): the
    damping of the other directions must follow their own scale. With
    λ = ridge · mean(diag G) the quiet directions would be shrunk to almost zero."""
    g = torch.Generator().manual_seed(12)
    n, k, d = 4000, 16, 8
    h = torch.randn(n, k, generator=g, dtype=torch.float64)
    h[:, 0] *= 1000.0
    w_true = torch.randn(d, k, generator=g, dtype=torch.float64)
    y = h @ w_true.T + 0.01 * torch.randn(n, d, generator=g, dtype=torch.float64)
    gram, cross = h.T @ h, h.T @ y
    w = ridge_solve(gram, cross, 1e-3).T  # [d, k]
    rel = float(torch.linalg.norm(w[:, 1:] - w_true[:, 1:]) / torch.linalg.norm(w_true[:, 1:]))
    assert rel < 0.05  # 0.017
    # What the old mean-scaled damping did (kept here as the regression it guards):
    lam = 1e-3 * gram.diagonal().mean()
    w_old = torch.linalg.solve(gram + lam * torch.eye(k, dtype=torch.float64), cross).T
    rel_old = float(torch.linalg.norm(w_old[:, 1:] - w_true[:, 1:]) / torch.linalg.norm(w_true[:, 1:]))
    assert rel_old > 0.5  # 0.98: the quiet directions were shrunk to almost nothing


def test_ridge_solve_in_place_matches_the_copying_solve():
    """consume=True factorizes and solves inside the caller's float64 tensors and
    gives the same solution as the copying path, prior included."""
    x, _ = _cov(40, n=300, seed=3)
    gram, rhs = x.T @ x, x.T @ torch.randn(300, 7, dtype=torch.float64)
    prior = torch.randn(40, 7)
    want = ridge_solve(gram, rhs, 0.1, prior=prior)
    g, r = gram.clone(), rhs.clone()
    got = ridge_solve(g, r, 0.1, prior=prior, consume=True)
    assert got.data_ptr() == r.data_ptr()  # no new [k, d] solution, no second k x k factor
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_ridge_solve_in_place_refuses_what_cholesky_rejects():
    """An indefinite Gram: the copying solve falls back to LU; the in-place one has
    overwritten its Gram and says so (the caller rebuilds and solves by copy)."""
    gram = torch.diag(torch.tensor([1.0, -4.0, 2.0], dtype=torch.float64))
    rhs = torch.ones(3, 2, dtype=torch.float64)
    sol = ridge_solve(gram, rhs, 0.0)
    torch.testing.assert_close(gram @ sol, rhs, rtol=1e-6, atol=1e-6)  # LU: exact up to the 1e-10 floor
    with pytest.raises(torch.linalg.LinAlgError):
        ridge_solve(gram.clone(), rhs.clone(), 0.0, consume=True)
