"""GFLoss, GFMDiff's geometric-facilitated loss (the reference's ``calc_error`` with ``calc_dl``; its README's Figure 2).

From the denoiser's outputs at step t (the predicted noise eps_hat = [P_hat, X_hat, A_hat, V_hat]: positions,
one-hot types, atomic number, valence), the bonds the predicted geometry implies give a valence for
every atom, and GFLoss pulls the predicted valence channel towards it:

    p_i          = softmax(X_hat_i)                                        (no gradient)
    b_ij(a, c)   = [ |P_hat_i - P_hat_j| < r_ac ]   i != j, both real      r_ac: EDM's longest bond length + margin
    v_i          = 4 sum_j sum_{a,c} p_i(a) p_j(c) b_ij(a, c) / 10         (x norm_values[0] / norm_values[2])
    GFLoss       = sum_i alpha_t ((v_i + V_i) / 2 - V_hat_i)^2 / N         V: the true noise of the valence channel

and the denoiser's error becomes ||eps - eps_hat||^2 / (N D) + lambda GFLoss, lambda = 0.01.

Only V_hat receives a gradient: the bond test is a step function and the type probabilities are
detached, as in the reference. The bonded-pair count is weighted, not the bond order (the reference tests
``dist < any tabulated length``), and the factor 4 / 10 is the reference's. With a perfect prediction
(eps_hat = eps) GFLoss is not zero: it is alpha_t ((v(eps) - V) / 2)^2 per atom, v(eps) being what the
rule reads from the true noise: a floor the network cannot lower, largest at small t where alpha_t ~ 1.
(At t = 0 the training loss is L_0, which has no GFLoss, as in the reference.)
"""

from __future__ import annotations

import torch

from chemgen.models.gfmdiff.bonds import pair_distances


def predicted_valence(pos: torch.Tensor, type_logits: torch.Tensor, mask: torch.Tensor, cutoffs: torch.Tensor,
                      onehot_norm: float = 4.0, valence_norm: float = 10.0) -> torch.Tensor:
    """v_i (B, N): probability-weighted count of the atoms within bonding distance of atom i, scaled as the
    reference scales it (x onehot_norm / valence_norm)."""
    n = mask.shape[1]
    p = torch.softmax(type_logits.detach(), dim=-1)                                  # (B, N, K)
    with torch.no_grad():
        distance = pair_distances(pos.detach())                                      # (B, N, N)
        pair = mask[:, :, None] & mask[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=mask.device)
        bonded = (distance[..., None, None] < cutoffs.to(distance)) & pair[..., None, None]   # (B, N, N, K, K)
    pair_prob = p[:, :, None, :, None] * p[:, None, :, None, :]                               # p_i(a) p_j(c)
    return (pair_prob * bonded).sum((2, 3, 4)) * onehot_norm / valence_norm


def gfloss(eps_hat: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor, mask: torch.Tensor,
           cutoffs: torch.Tensor, types: slice, valence: int, onehot_norm: float = 4.0,
           valence_norm: float = 10.0) -> torch.Tensor:
    """GFLoss of each system (B,) from eps_hat, eps (B, N, D) and alpha_t (B, 1); ``types`` and ``valence``
    locate the one-hot block and the valence channel in the last dimension."""
    v = predicted_valence(eps_hat[..., :3], eps_hat[..., types], mask, cutoffs, onehot_norm, valence_norm)
    target = (v + eps[..., valence]) / 2                                                       # (B, N)
    return (alpha_t * (target - eps_hat[..., valence]) ** 2 * mask).sum(1) / mask.shape[1]
