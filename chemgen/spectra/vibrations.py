"""Harmonic vibrations from finite differences: frequencies, normal modes, IR intensities, Raman activities.

Pure numpy over two callables, so any electronic-structure code can drive it:

* ``gradient_and_dipole(positions) -> (energy, gradient (N, 3) Eh/bohr, dipole (3,) e*bohr)``
  at zero field, for the Hessian and the dipole derivatives (atomic polar tensor);
* ``gradient_in_field(positions, field) -> gradient`` for the polarisability derivatives.

Raman without analytic polarisabilities. The polarisability is the second field derivative
of the energy, alpha_ij = -d2E / dF_i dF_j, so its derivative with respect to a nuclear coordinate
is the second field derivative of the gradient: d(alpha_ij)/dx_k = -d2(dE/dx_k) / dF_i dF_j. Thirteen
gradients at the relaxed geometry (zero field, +-h along x, y, z, and (++, --) along xy, xz, yz) give
the whole tensor for every atom at once, instead of a polarisability at each of 6N displaced geometries.

Units. Hessian Eh/bohr^2; masses amu; frequencies cm^-1; IR intensities km/mol (the standard
factor 974.88 km/mol per e^2/amu); Raman activities A^4/amu, S = 45 a'^2 + 7 g'^2 (as Gaussian reports them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase.data import atomic_masses
from scipy import constants

BOHR_A = constants.physical_constants["Bohr radius"][0] * 1e10
# sqrt(Eh / (bohr^2 amu)) in rad/s, then divided by 2*pi*c (cm/s) for wavenumbers.
_AU_TO_CM1 = np.sqrt(constants.physical_constants["hartree-joule relationship"][0]
                     / (constants.physical_constants["Bohr radius"][0] ** 2 * constants.atomic_mass)) / (
    2 * np.pi * constants.c * 100)
# IR: (dmu/dQ)^2 in e^2/amu -> km/mol: N_A * pi / (3 c^2) / (4 pi eps0), in SI, then m/mol -> km/mol.
_IR_KM_PER_MOL = (constants.N_A * np.pi / (3 * constants.c**2) / (4 * np.pi * constants.epsilon_0)
                  * constants.e**2 / constants.atomic_mass / 1000)


@dataclass(frozen=True)
class VibrationSettings:
    displacement_bohr: float = 0.005   # central differences for the Hessian and the dipole derivatives
    field_au: float = 0.002            # finite-field step for the polarisability derivatives


@dataclass(frozen=True)
class Vibrations:
    frequencies_cm1: np.ndarray        # (M,) ascending; imaginary modes as negative numbers
    modes: np.ndarray                  # (M, N, 3) normalised Cartesian displacements
    ir_intensities_km_mol: np.ndarray  # (M,)
    raman_activities_a4_amu: np.ndarray | None  # (M,) or None when not computed
    dipole_derivatives: np.ndarray     # (3N, 3) e (atomic polar tensor, d mu_j / d x_i)


def masses_of(numbers: np.ndarray) -> np.ndarray:
    return atomic_masses[np.asarray(numbers)]


def external_basis(positions_a: np.ndarray, masses: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Orthonormal mass-weighted translations and rotations (3N, 5 or 6; 5 for a linear molecule)."""
    sqrt_m = np.sqrt(masses)
    centred = positions_a - (masses[:, None] * positions_a).sum(0) / masses.sum()
    vectors = []
    for axis in np.eye(3):
        vectors.append((sqrt_m[:, None] * axis[None, :]).ravel())                       # translation
        vectors.append((sqrt_m[:, None] * np.cross(axis[None, :], centred)).ravel())   # rotation
    u, s, _ = np.linalg.svd(np.array(vectors).T, full_matrices=False)
    return u[:, s > tol * s.max()]


def numerical_hessian(gradient_and_dipole: Callable, positions_a: np.ndarray, step_bohr: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference Hessian (3N, 3N) Eh/bohr^2 and dipole derivatives (3N, 3) e, from 6N gradients."""
    n = len(positions_a)
    step_a = step_bohr * BOHR_A
    hessian = np.zeros((3 * n, 3 * n))
    dipole_derivatives = np.zeros((3 * n, 3))
    for k in range(3 * n):
        atom, axis = divmod(k, 3)
        results = []
        for sign in (1.0, -1.0):
            displaced = positions_a.copy()
            displaced[atom, axis] += sign * step_a
            _, gradient, dipole = gradient_and_dipole(displaced)
            results.append((gradient.ravel(), dipole))
        hessian[k] = (results[0][0] - results[1][0]) / (2 * step_bohr)
        dipole_derivatives[k] = (results[0][1] - results[1][1]) / (2 * step_bohr)
    return 0.5 * (hessian + hessian.T), dipole_derivatives


def polarizability_derivatives(gradient_in_field: Callable, positions_a: np.ndarray, field_au: float) -> np.ndarray:
    """d(alpha_ij)/dx_k (3N, 3, 3) in bohr^2, from the gradient's second derivative in the field."""
    h = field_au
    zero = gradient_in_field(positions_a, np.zeros(3)).ravel()
    axis_pm = {}
    for i in range(3):
        for sign in (1, -1):
            axis_pm[i, sign] = gradient_in_field(positions_a, sign * h * np.eye(3)[i]).ravel()
    d2 = np.zeros((3 * len(positions_a), 3, 3))
    for i in range(3):
        d2[:, i, i] = (axis_pm[i, 1] - 2 * zero + axis_pm[i, -1]) / h**2
    for i, j in ((0, 1), (0, 2), (1, 2)):
        e = np.eye(3)
        plus = gradient_in_field(positions_a, h * (e[i] + e[j])).ravel()
        minus = gradient_in_field(positions_a, -h * (e[i] + e[j])).ravel()
        # f(++) + f(--) - f(+i) - f(-i) - f(+j) - f(-j) + 2 f(0) = 2 h^2 d2f/dFi dFj + O(h^4)
        mixed = (plus + minus - axis_pm[i, 1] - axis_pm[i, -1] - axis_pm[j, 1] - axis_pm[j, -1] + 2 * zero) / (2 * h**2)
        d2[:, i, j] = d2[:, j, i] = mixed
    return -d2


def normal_modes(hessian: np.ndarray, positions_a: np.ndarray, masses: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (cm^-1, negative = imaginary) and mass-weighted eigenvectors (3N, M) of the internal Hessian."""
    inv_sqrt_m = np.repeat(1 / np.sqrt(masses), 3)
    weighted = hessian * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]
    external = external_basis(positions_a, masses)
    # An orthonormal basis of the complement of translations and rotations (Eckart projection).
    q, _ = np.linalg.qr(np.hstack([external, np.eye(len(weighted))]))
    internal = q[:, external.shape[1]:]
    eigenvalues, vectors = np.linalg.eigh(internal.T @ weighted @ internal)
    frequencies = np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * _AU_TO_CM1
    return frequencies, internal @ vectors


def raman_activity(dalpha_dq: np.ndarray) -> np.ndarray:
    """45 a'^2 + 7 g'^2 from polarisability derivatives along each mode (M, 3, 3)."""
    a = np.trace(dalpha_dq, axis1=1, axis2=2) / 3
    xx, yy, zz = dalpha_dq[:, 0, 0], dalpha_dq[:, 1, 1], dalpha_dq[:, 2, 2]
    xy, xz, yz = dalpha_dq[:, 0, 1], dalpha_dq[:, 0, 2], dalpha_dq[:, 1, 2]
    gamma2 = 0.5 * ((xx - yy) ** 2 + (yy - zz) ** 2 + (zz - xx) ** 2 + 6 * (xy**2 + xz**2 + yz**2))
    return 45 * a**2 + 7 * gamma2


def harmonic_analysis(numbers: np.ndarray, positions_a: np.ndarray, gradient_and_dipole: Callable,
                      gradient_in_field: Callable | None, settings: VibrationSettings = VibrationSettings()
                      ) -> Vibrations:
    """Frequencies, modes, IR intensities and (when ``gradient_in_field`` is given) Raman activities."""
    masses = masses_of(numbers)
    hessian, dmu_dx = numerical_hessian(gradient_and_dipole, positions_a, settings.displacement_bohr)
    frequencies, vectors = normal_modes(hessian, positions_a, masses)
    # Cartesian displacement per unit mass-weighted normal coordinate: L / sqrt(m)  (3N, M).
    cartesian = vectors * np.repeat(1 / np.sqrt(masses), 3)[:, None]
    dmu_dq = cartesian.T @ dmu_dx                                  # (M, 3) e / sqrt(amu)
    ir = (dmu_dq**2).sum(1) * _IR_KM_PER_MOL
    raman = None
    if gradient_in_field is not None:
        dalpha_dx = polarizability_derivatives(gradient_in_field, positions_a, settings.field_au)
        dalpha_dq = np.einsum("km,kij->mij", cartesian, dalpha_dx) * BOHR_A**2  # A^2 / sqrt(amu)
        raman = raman_activity(dalpha_dq)
    modes = cartesian.T.reshape(-1, len(numbers), 3)
    modes = modes / np.linalg.norm(modes.reshape(len(modes), -1), axis=1)[:, None, None]
    return Vibrations(frequencies, modes, ir, raman, dmu_dx)
