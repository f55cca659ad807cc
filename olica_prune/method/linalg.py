"""The method's tensor math, as pure functions (float64 inside).

Conventions: a linear layer's weight ``W`` is ``[out, in]`` (PyTorch); the
calibration inputs enter through their second moment ``C = E[x xᵀ]`` (``[d, d]``)
and its Cholesky factor ``L`` (``C = L Lᵀ``), so ``‖W L‖_F² = E‖W x‖²`` — the
activation-weighted energy every decomposition here ranks by.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

OndMethod = Literal["fast", "exact", "separate", "none"]


def damped_cholesky(cov: torch.Tensor, *, damp: float = 1e-4) -> torch.Tensor:
    """Lower Cholesky factor of ``cov + damp·mean(diag)·I`` in float64.

    The damping keeps the factor invertible when some input directions never
    occur in the calibration data (rank-deficient covariance).
    """
    c = cov.double()
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    scale = c.diagonal().mean().clamp_min(1e-12)
    for k in range(6):
        try:
            return torch.linalg.cholesky(c + (damp * 10**k) * scale * eye)
        except torch.linalg.LinAlgError:
            continue
    raise ValueError("calibration covariance is not positive definite even after damping; are inputs all zero?")


GRAM_SVD_FLOOR = 1e-6


def thin_svd(m: torch.Tensor, *, via_gram: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``m = U diag(s) Vᵀ`` (``s`` descending), as ``torch.linalg.svd(m, full_matrices=False)``.

    Taken from ``eigh`` of the smaller Gram matrix (``via_gram``, the default): on
    an H200 cuSOLVER's SVD of a 4096 × 4096 float64 matrix takes 1.6 s and its
    ``eigh`` 0.1 s; on this project's 2-core CPU, at 2048, 1.9 s against 0.9 s.
    In float64 the squared condition number costs nothing that matters here: the
    leading singular vectors, the ones any truncation keeps, come out to ~1e-12.
    What it cannot resolve are singular values below ~1e-8·s_max (float64's square
    root of epsilon): those below ``GRAM_SVD_FLOOR·s_max`` are returned as 0 with
    zero vectors on the side derived from ``m`` (the ``eigh`` side stays
    orthonormal), so a truncation that reaches them adds nothing.
    ``via_gram=False``: torch's SVD.
    """
    if not via_gram:
        return torch.linalg.svd(m, full_matrices=False)
    m = m.double()
    wide = m.shape[0] <= m.shape[1]
    gram = m @ m.T if wide else m.T @ m
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0), evecs.flip(1)  # descending
    s = evals.clamp_min(0).sqrt()
    resolved = s > s[0] * GRAM_SVD_FLOOR
    s = torch.where(resolved, s, torch.zeros_like(s))
    inv = torch.where(resolved, 1 / s.clamp_min(1e-300), torch.zeros_like(s))
    if wide:  # m mᵀ = U S² Uᵀ;  Vᵀ = S⁻¹ Uᵀ m
        return evecs, s, (evecs.T @ m) * inv[:, None]
    return (m @ evecs) * inv[None, :], s, evecs.T  # mᵀ m = V S² Vᵀ;  U = m V S⁻¹


# ---------------------------------------------------------------- low rank


@dataclasses.dataclass
class LowRank:
    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    energy_kept: float  # fraction of E‖W x‖² kept


def lowrank_factorize(weight: torch.Tensor, chol: torch.Tensor, rank: int) -> LowRank:
    """Activation-aware rank-``rank`` pair ``W ≈ B A`` minimising E‖(W − BA) x‖².

    SVD of ``W L = U Σ Vᵀ``; ``B = U_r Σ_r``, ``A = V_rᵀ L⁻¹``. Exact (up to
    round-off) when ``rank`` reaches ``rank(W)``.
    """
    w = weight.double()
    wl = w @ chol
    u, s, vt = thin_svd(wl)
    r = min(rank, s.numel())
    b = u[:, :r] * s[:r]
    # A = V_rᵀ L⁻¹  <=>  A L = V_rᵀ  <=>  Lᵀ Aᵀ = V_r
    a = torch.linalg.solve_triangular(chol.T, vt[:r].T, upper=True).T
    total = (s**2).sum().clamp_min(1e-30)
    return LowRank(a=a, b=b, energy_kept=float((s[:r] ** 2).sum() / total))


def singular_energies(weight: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """Squared singular values of ``W L`` (descending): what each rank carries."""
    wl = weight.double() @ chol
    return (thin_svd(wl)[1] if wl.is_cuda else torch.linalg.svdvals(wl)) ** 2


def lowrank_pays_off(rank: int, in_features: int, out_features: int) -> bool:
    """Factorising saves parameters only when r·(in + out) < in·out."""
    return rank * (in_features + out_features) < in_features * out_features


# ---------------------------------------------------------- OND (V and O)


@dataclasses.dataclass
class VOBasis:
    """A change of basis of one KV head's value space, strongest direction first.

    ``v_new = v_map @ w_v`` (``[e, d]``) and ``o_new_i = w_o_i @ o_map``: the
    product ``w_o_i @ w_v`` is unchanged; keeping the first ``k`` rows/columns
    keeps the ``k`` strongest directions. ``strength[t]²`` estimates the
    activation-weighted energy of direction ``t`` in the group's output.
    """

    v_map: torch.Tensor  # [e, e]
    o_map: torch.Tensor  # [e, e]
    strength: torch.Tensor  # [e], descending for fast/exact


def vo_basis(w_v: torch.Tensor, w_o_group: list[torch.Tensor], chol: torch.Tensor | None,
             method: OndMethod = "fast", *, v_bias: torch.Tensor | None = None,
             value_factor: torch.Tensor | None = None) -> VOBasis:
    """Basis for one KV head: ``w_v`` ``[e, d]``, ``w_o_group`` the ``[d, e]`` blocks
    of ``o_proj`` of every query head reading this KV head (GQA: all share it).

    - ``fast``: orthogonal rotation from the SVD of ``W_v L`` alone (the paper's
      fast OND: the factor's spectrum stands in for the product's).
    - ``exact``: OND of the stacked product ``[W_o^(i)] W_v L`` without forming
      it: QR of the stacked ``W_o`` then an ``e × d`` SVD. Truncation is then the
      best rank-k approximation of the group's weighted V/O product.
    - ``separate``: truncated SVDs of ``W_v L`` and ``W_o`` taken separately
      (the paper's Table 5 ablation); exact only at full width.
    - ``none``: no rotation; value dims ranked by their own product energy.

    ``value_factor`` (``[e, e]``, ``F Fᵀ = E[ctx ctxᵀ]``) replaces ``W_v L`` by a
    factor of what the heads actually read: the attention output (o_proj's
    input), i.e. ``W_v`` applied to softmax-mixed inputs, instead of ``W_v``
    applied to each token's own input.
    """
    wv = w_v.double()
    wo = torch.cat([w.double() for w in w_o_group], dim=0)  # [G·d, e]
    if value_factor is not None:
        wvl = value_factor.double()
    else:
        wvl = wv @ chol  # [e, d]
    if v_bias is not None and value_factor is None:
        # The bias is a constant input direction: append it so it is ranked too.
        wvl = torch.cat([wvl, v_bias.double()[:, None]], dim=1)
    if method == "fast":
        u, s, _ = thin_svd(wvl)
        strength = s * torch.linalg.vector_norm(wo @ u, dim=0)
        return VOBasis(v_map=u.T, o_map=u, strength=strength)
    if method == "exact":
        _, r = torch.linalg.qr(wo)  # wo = Q R, R: [e, e]
        r = _regularize_triangular(r)
        u, s, _ = thin_svd(r @ wvl)
        # v_new = Uᵀ R W_v ; o_new = W_o R⁻¹ U  (product unchanged)
        o_map = torch.linalg.solve_triangular(r, u, upper=True)
        return VOBasis(v_map=u.T @ r, o_map=o_map, strength=s)
    if method == "separate":
        uv, sv, _ = thin_svd(wvl)
        _, so, vot = thin_svd(wo)
        uo = vot.T  # right singular vectors of W_o: [e, e]
        # Truncating to k keeps W_o U_o,k (U_o,kᵀ U_v,k U_v,kᵀ) W_v; at full
        # width both projections are the identity.
        strength = so * torch.linalg.vector_norm(uo.T @ uv * sv, dim=1)
        order = torch.argsort(strength, descending=True)
        uo = uo[:, order]
        return _SeparateBasis(uv=uv, uo=uo, strength=strength[order])
    if method == "none":
        return ranked_basis(torch.linalg.vector_norm(wvl, dim=1) * torch.linalg.vector_norm(wo, dim=0))
    raise ValueError(f"unknown OND method {method!r}; choose fast, exact, separate or none")


def ranked_basis(scores: torch.Tensor) -> VOBasis:
    """No rotation: the value dims themselves, strongest (highest score) first."""
    order = torch.argsort(scores, descending=True)
    perm = torch.eye(scores.numel(), dtype=torch.float64, device=scores.device)[order]
    return VOBasis(v_map=perm, o_map=perm.T, strength=scores[order])


class _SeparateBasis(VOBasis):
    """Separate truncation: the maps depend on ``k`` (not one fixed rotation)."""

    def __init__(self, *, uv: torch.Tensor, uo: torch.Tensor, strength: torch.Tensor) -> None:
        super().__init__(v_map=uv.T, o_map=uo, strength=strength)
        self.uv = uv
        self.uo = uo


def truncate_vo(basis: VOBasis, w_v: torch.Tensor, w_o_group: list[torch.Tensor], k: int,
                *, v_bias: torch.Tensor | None = None):
    """Apply ``basis`` and keep ``k`` value dims: returns (``[k, d]`` W_v, its bias or
    None, list of ``[d, k]`` W_o blocks)."""
    wv = w_v.double()
    if isinstance(basis, _SeparateBasis):
        uv_k = basis.uv[:, :k]
        uo_k = basis.uo[:, :k]
        v_map = uo_k.T @ uv_k @ uv_k.T  # [k, e]
        o_map = uo_k
    else:
        v_map = basis.v_map[:k]
        o_map = basis.o_map[:, :k]
    new_v = v_map @ wv
    new_b = v_map @ v_bias.double() if v_bias is not None else None
    new_o = [w.double() @ o_map for w in w_o_group]
    return new_v, new_b, new_o


def _regularize_triangular(r: torch.Tensor, rel: float = 1e-8) -> torch.Tensor:
    # A W_o with (near) dependent columns leaves R singular; nudge its diagonal.
    d = r.diagonal()
    floor = rel * d.abs().max().clamp_min(1e-30)
    sign = torch.where(d >= 0, 1.0, -1.0).to(r.dtype)
    fixed = torch.where(d.abs() < floor, sign * floor, d)
    return r - torch.diag(d) + torch.diag(fixed)


# ---------------------------------------------------------- FFN importance


def ffn_contribution_scores(h_sq_mean: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """Olica's FFN neuron score: RMS of neuron ``k``'s output contribution,
    ``sqrt(E[h_k²]) · ‖W_down[:, k]‖`` (``h = act(gate x) * up x``)."""
    return h_sq_mean.double().clamp_min(0).sqrt() * torch.linalg.vector_norm(w_down.double(), dim=0)


def ffn_paper_scores(w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                     x_sq_mean: torch.Tensor, h_sq_mean: torch.Tensor) -> torch.Tensor:
    """The paper's FFN score: activation-weighted norms of the neuron's
    ``gate_proj``/``up_proj`` rows (``‖W[k] ∘ √E[x²]‖``) plus that of its
    ``down_proj`` column (``‖W_down[:, k]‖ · √E[h_k²]``)."""
    xn = x_sq_mean.double().clamp_min(0).sqrt()
    hn = h_sq_mean.double().clamp_min(0).sqrt()
    return (torch.linalg.vector_norm(w_gate.double() * xn, dim=1) + torch.linalg.vector_norm(w_up.double() * xn, dim=1)
            + torch.linalg.vector_norm(w_down.double(), dim=0) * hn)


def ffn_wanda_scores(w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                     x_sq_mean: torch.Tensor, h_sq_mean: torch.Tensor) -> torch.Tensor:
    """Wanda-sp: Σ |W|·‖input‖ over every weight of the neuron's structure."""
    xn = x_sq_mean.double().sqrt()
    hn = h_sq_mean.double().sqrt()
    return ((w_gate.double().abs() + w_up.double().abs()) @ xn) + w_down.double().abs().sum(0) * hn


def ffn_magnitude_scores(w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """Magnitude: Σ |W| over every weight of the neuron's structure."""
    return w_gate.double().abs().sum(1) + w_up.double().abs().sum(1) + w_down.double().abs().sum(0)


# ------------------------------------------------------ linear calibration


@dataclasses.dataclass
class Calibration:
    a: torch.Tensor  # [r, d]
    b: torch.Tensor  # [d, r]
    residual_energy: float  # E‖e‖² before the branch
    remaining_energy: float  # E‖e − B A x‖² after it (on the calibration data)

    @property
    def explained(self) -> float:
        return 1.0 - self.remaining_energy / max(self.residual_energy, 1e-30)


def ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, ridge: float, *,
                prior: torch.Tensor | None = None, consume: bool = False) -> torch.Tensor:
    """``(G + Λ)⁻¹ (R + Λ P)`` for an SPD Gram ``G`` with per-direction (Jacobi)
    damping ``Λ = ridge · diag(G)``: the least-squares solution shrunk towards
    ``prior`` ``P`` (same shape as the solution; zero when None).

    Each direction is shrunk relative to its own scale, so one massive
    activation channel (common in LLMs) does not over-damp all the others, as a
    single ``ridge · mean(diag G)`` would. A floor of ``1e-10 · mean(diag G)``
    keeps directions that never occur solvable. Solved by Cholesky.

    With ``consume`` (float64 inputs the caller no longer needs; the refit's
    Grams are the pruner's largest temporaries) everything happens in the
    caller's tensors: ``gram`` is damped and factorized in place, ``rhs``
    becomes the solution. A Gram that Cholesky rejects then raises
    ``torch.linalg.LinAlgError`` (its factorization has overwritten it; under
    Jacobi damping only a non-finite or undamped Gram can fail), and the
    caller rebuilds it and solves again without ``consume``, which falls back
    to LU.
    """
    g = gram.double()
    diag = g.diagonal()
    damp = ridge * diag + 1e-10 * diag.mean().clamp_min(1e-30)
    in_place = consume and g is gram and rhs.dtype == torch.float64
    if in_place:
        a = g
        a.diagonal().add_(damp)
    else:
        a = g + torch.diag(damp)
    rhs = rhs.double()  # the caller's own tensor when it is float64 already
    if prior is not None:
        rhs = rhs.addcmul_(prior, damp[:, None]) if in_place else rhs + prior.double() * damp[:, None]
    if in_place:
        info = torch.zeros((), dtype=torch.int32, device=a.device)
        torch.linalg.cholesky_ex(a, out=(a, info))
        if int(info) != 0:
            raise torch.linalg.LinAlgError(f"ridge_solve: the damped Gram is not positive definite (minor {int(info)})")
        return torch.cholesky_solve(rhs, a, out=rhs)
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.solve(a, rhs)


def fit_calibration(xtx: torch.Tensor, xte: torch.Tensor, ete_diag: torch.Tensor, rank: int,
                    *, ridge: float = 1e-3, weighted: bool = True) -> Calibration:
    """Low-rank ridge regression of the FFN residual ``e`` on its input ``x``.

    ``xtx = Σ x xᵀ`` ``[d, d]``, ``xte = Σ x eᵀ`` ``[d, d]``, ``ete_diag = Σ e∘e`` ``[d]``.
    Full ridge solution ``Ŵ = (XᵀX + Λ)⁻¹ XᵀE`` (Jacobi damping, see
    :func:`ridge_solve`; ``e ≈ Ŵᵀ x``), then a rank-r truncation. Output dims are
    weighed by how well they are predicted (``D = diag(R²)``, R² of the full
    ridge fit per dim): reduced-rank regression in the norm ``‖D^½ ·‖``. With
    ``V`` the top-r eigenvectors of ``D^½ F D^½`` (``F = ŴᵀXᵀXŴ``, the fitted
    signal), the minimiser of ``Σ (e − M x)ᵀ D (e − M x)`` over rank-r ``M`` is
    ``M = D^-½ V Vᵀ D^½ Ŵᵀ``: branch ``e ≈ B A x`` with ``A = Vᵀ D^½ Ŵᵀ`` and
    ``B = D^-½ V``.
    """
    c = xtx.double()
    xe = xte.double()
    ete = ete_diag.double()
    d = c.shape[0]
    w = ridge_solve(c, xe, ridge)  # [d_in, d_out]
    fitted = w.T @ c @ w  # Σ (Ŵᵀx)(Ŵᵀx)ᵀ  [d_out, d_out]
    if weighted:
        r2 = (fitted.diagonal() / ete.clamp_min(1e-30)).clamp(1e-3, 1.0)
    else:
        r2 = torch.ones(d, dtype=c.dtype, device=c.device)
    sq = r2.sqrt()
    evals, evecs = torch.linalg.eigh(sq[:, None] * fitted * sq[None, :])
    v = evecs[:, torch.argsort(evals, descending=True)[:rank]]  # [d, r]
    a = (sq[:, None] * v).T @ w.T  # [r, d]   Vᵀ D^½ Ŵᵀ
    b = v / sq[:, None]  # [d, r]   D^-½ V
    # Remaining energy Σ‖e − B A x‖² = Σ‖e‖² − 2 tr(B A XᵀE) + tr(B A XᵀX Aᵀ Bᵀ),
    # with the traces taken through the rank-r factors (no d×d×d products).
    cross = torch.trace(a @ xe @ b)  # tr(A XᵀE B)
    fit = torch.sum((b.T @ b) * (a @ c @ a.T))  # tr(BᵀB · A XᵀX Aᵀ), both [r, r] and symmetric
    total = float(ete.sum())
    remaining = total - 2 * float(cross) + float(fit)
    return Calibration(a=a, b=b, residual_energy=total, remaining_energy=max(remaining, 0.0))


def round_to_multiple(x: float, multiple: int, *, minimum: int) -> int:
    """Round to the nearest multiple, never below ``minimum``."""
    return max(minimum, int(round(x / multiple)) * multiple)
