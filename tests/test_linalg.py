"""Closed-form checks of the method's math (olica_prune.linalg)."""

import pytest
import torch

from olica_prune.linalg import (
    damped_cholesky,
    ffn_contribution_scores,
    fit_calibration,
    lowrank_factorize,
    lowrank_pays_off,
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
    lam = lam_rel * xtx.diagonal().mean()
    ridge = torch.linalg.solve(xtx + lam * torch.eye(d, dtype=torch.float64), xte)  # e ≈ ridgeᵀ x
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
