"""GFN2-xTB through tblite: geometry optimisation, and gradients and dipoles in a uniform electric field.

tblite is imported lazily so that everything else in chemgen imports without it. All arrays
handed to tblite are in atomic units (bohr, hartree); the public functions take Angstrom.

tblite reads OMP_NUM_THREADS when it is loaded: the spectra workers set it to 1 before the
first import (two threads per process measured about 20x slower on a shared 2-core machine).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from ase import units

from chemgen.errors import ChemgenError

BOHR = units.Bohr        # Angstrom per bohr
HARTREE = units.Hartree  # eV per hartree


class XtbError(ChemgenError, RuntimeError):
    """tblite failed: no SCC convergence, an optimisation that did not converge, or bad input."""


@dataclass(frozen=True)
class XtbSettings:
    """Settings of every xTB calculation (stored in the dataset manifest)."""

    method: str = "GFN2-xTB"
    accuracy: float = 0.01            # tblite's SCC accuracy; 1.0 is its default, smaller is tighter
    electronic_temperature_k: float = 300.0
    max_scc_iterations: int = 250
    fmax_ev_per_a: float = 0.005      # optimisation stops when every force is below this (~1e-4 Eh/bohr)
    max_opt_steps: int = 1000
    bfgs_alpha_ev_per_a2: float = 20.0  # BFGS's initial Hessian; ASE's 70 took 40 % more steps on QM9

    def as_dict(self) -> dict:
        return asdict(self)


def tblite_version() -> str:
    from importlib.metadata import version

    return version("tblite")


def unpaired_electrons(numbers: np.ndarray, charge: int) -> int:
    """0 for an even electron count, 1 for an odd one (the lowest spin state)."""
    return int((int(np.sum(numbers)) - charge) % 2)


def _calculator(numbers: np.ndarray, positions_bohr: np.ndarray, settings: XtbSettings, field=None, charge: int = 0):
    from tblite import library
    from tblite.interface import Calculator

    calc = Calculator(settings.method, np.asarray(numbers, dtype=np.int32), positions_bohr, charge=float(charge),
                      uhf=unpaired_electrons(numbers, charge), color=False, logger=lambda _message: None)
    calc.set("verbosity", 0)
    calc.set("accuracy", settings.accuracy)
    calc.set("max-iter", settings.max_scc_iterations)
    calc.set("temperature", settings.electronic_temperature_k * units.kB / HARTREE)
    if field is not None:
        # tblite's binding expects a C pointer; it copies the vector into the container.
        calc.add("electric-field", library.ffi.new("double[3]", [float(f) for f in field]))
    return calc


class XtbPoint:
    """Repeated single points on one molecule (one field), each restarted from the last wavefunction."""

    def __init__(self, numbers: np.ndarray, positions_a: np.ndarray, settings: XtbSettings,
                 field_au: np.ndarray | None = None, charge: int = 0):
        self.numbers = np.asarray(numbers)
        self.settings = settings
        self._calc = _calculator(self.numbers, np.asarray(positions_a) / BOHR, settings, field_au, charge)
        self._result = None

    def __call__(self, positions_a: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (Eh), gradient (Eh/bohr, (N, 3)) and dipole (e*bohr, (3,)) at these positions."""
        from tblite.exceptions import TBLiteRuntimeError

        self._calc.update(np.asarray(positions_a) / BOHR)
        try:
            self._result = self._calc.singlepoint(self._result)
        except TBLiteRuntimeError as err:
            raise XtbError(f"xTB single point failed: {err}") from err
        return (float(self._result.get("energy")), np.array(self._result.get("gradient")),
                np.array(self._result.get("dipole")))


def optimize(numbers: np.ndarray, positions_a: np.ndarray, settings: XtbSettings, charge: int = 0
             ) -> tuple[np.ndarray, float, int]:
    """Relax a molecule with ASE's BFGS on GFN2-xTB forces.

    Returns the relaxed positions (Angstrom), the energy (Eh) and the number of steps; raises
    `XtbError` when the forces do not fall below ``settings.fmax_ev_per_a`` in ``max_opt_steps``.
    """
    from ase import Atoms
    from ase.calculators.calculator import Calculator as AseCalculator
    from ase.calculators.calculator import all_changes
    from ase.optimize import BFGS

    point = XtbPoint(numbers, positions_a, settings, charge=charge)

    class _Xtb(AseCalculator):  # a thin ASE face on XtbPoint, keeping its wavefunction restart
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            energy, gradient, _ = point(self.atoms.positions)
            self.results = {"energy": energy * HARTREE, "forces": -gradient * HARTREE / BOHR}

    atoms = Atoms(numbers=numbers, positions=positions_a, calculator=_Xtb())
    optimizer = BFGS(atoms, logfile=None, alpha=settings.bfgs_alpha_ev_per_a2)
    converged = optimizer.run(fmax=settings.fmax_ev_per_a, steps=settings.max_opt_steps)
    if not converged:
        fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
        raise XtbError(f"optimisation did not converge in {settings.max_opt_steps} steps (max force {fmax:.4f} eV/A)")
    energy = atoms.get_potential_energy() / HARTREE
    return atoms.positions.copy(), float(energy), int(optimizer.nsteps)
