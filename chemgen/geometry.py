"""Torch geometry helpers: random rotations and lattice parameters <-> lattice vectors.

Conventions follow pymatgen's ``Lattice.from_parameters``: rows are lattice vectors,
c lies along z and a in the xz plane; angles alpha, beta, gamma are in radians here.
"""

from __future__ import annotations

import torch


def random_rotation(n: int = 1, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform random proper rotations (n, 3, 3) from normalised Gaussian quaternions (Shoemake 1992).

    Elementwise maths only (no QR, no boolean indexing), so on a GPU it never waits for the host.
    """
    draw_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if generator is None:  # no generator argument at all: torch.compile traces this with a symbolic n
        q = torch.randn(n, 4, device=device, dtype=draw_dtype)
    else:
        q = torch.randn(n, 4, generator=generator, dtype=draw_dtype)
    q = (q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)).to(device=device, dtype=dtype)
    w, x, y, z = q.unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def inverse_3x3(m: torch.Tensor) -> torch.Tensor:
    """Inverse of (..., 3, 3) matrices by the adjugate: rows a, b, c -> [b x c, c x a, a x b]^T / det.

    Unlike ``torch.linalg.inv`` it runs no solver and checks no pivots, so a GPU step needs no host sync;
    singular matrices give inf/NaN, which callers mask.
    """
    a, b, c = m.unbind(-2)
    cofactors = torch.stack([torch.linalg.cross(b, c), torch.linalg.cross(c, a), torch.linalg.cross(a, b)], dim=-1)
    return cofactors / det_3x3(m)[..., None, None]


def det_3x3(m: torch.Tensor) -> torch.Tensor:
    """Determinant of (..., 3, 3) matrices as the triple product a . (b x c), with no LU factorisation."""
    a, b, c = m.unbind(-2)
    return (a * torch.linalg.cross(b, c)).sum(-1)


def lattice_parameters(cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengths (..., 3) and angles alpha, beta, gamma in radians (..., 3) of lattice rows."""
    a, b, c = cell.unbind(-2)
    lengths = torch.stack([a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)], dim=-1)

    def angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cosine = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(1e-12)
        return torch.arccos(cosine.clamp(-1.0, 1.0))

    return lengths, torch.stack([angle(b, c), angle(a, c), angle(a, b)], dim=-1)


def cell_from_parameters(lengths: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Lattice rows (..., 3, 3) from lengths and angles (radians), pymatgen's orientation.

    Angles that admit no lattice give NaN entries; callers treat those as invalid.
    """
    a, b, c = lengths.unbind(-1)
    alpha, beta, gamma = angles.unbind(-1)
    cos_a, cos_b, cos_g = torch.cos(alpha), torch.cos(beta), torch.cos(gamma)
    sin_a, sin_b = torch.sin(alpha), torch.sin(beta)
    cos_gamma_star = ((cos_a * cos_b - cos_g) / (sin_a * sin_b)).clamp(-1.0, 1.0)
    sin_gamma_star = torch.sqrt(1.0 - cos_gamma_star**2)
    zero = torch.zeros_like(a)
    vector_a = torch.stack([a * sin_b, zero, a * cos_b], dim=-1)
    vector_b = torch.stack([-b * sin_a * cos_gamma_star, b * sin_a * sin_gamma_star, b * cos_a], dim=-1)
    vector_c = torch.stack([zero, zero, c], dim=-1)
    return torch.stack([vector_a, vector_b, vector_c], dim=-2)
