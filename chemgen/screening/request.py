"""What a screening team asks for: a chemical system, optionally a formula, and the cell sizes that count."""

from __future__ import annotations

from dataclasses import dataclass

from chemgen.errors import UsageError

# MP-20's cells hold at most 20 atoms: the hull, the prototypes and the model all live there.
MAX_ATOMS = 20
# The most elements a request may name: every source needs a charge-balanced composition of all of them within
# MAX_ATOMS, and MP-20 holds almost no compounds of more than five elements.
MAX_ELEMENTS = 6


def parse_chemical_system(text: str | None) -> tuple[str, ...] | None:
    """The element symbols of a chemical system such as "Li-Fe-O", sorted and without repeats ("Fe", "Li", "O");
    None for None. A UsageError names the first part that is not an element symbol."""
    if text is None:
        return None
    from pymatgen.core import Element

    parts = [part.strip() for part in str(text).split("-")]
    known = {element.name for element in Element}  # the real elements: not the isotopes D and T (aliases of H)
    for part in parts:
        if part not in known:
            raise UsageError(f"chemical system {text!r}: {part!r} is not an element symbol "
                             "(elements separated by '-', e.g. 'Li-Fe-O')")
    return tuple(sorted(set(parts)))


@dataclass(frozen=True)
class ScreeningRequest:
    """A chemical system to find candidates in: every candidate holds all of ``elements`` and nothing else (a
    sub-system's compounds are on the hull already), at most ``max_atoms`` per cell; ``formula`` (reduced, e.g.
    "LiMn2O4") narrows it to one composition."""

    elements: tuple[str, ...]
    max_atoms: int = MAX_ATOMS
    formula: str | None = None

    @classmethod
    def parse(cls, system: str, formula: str | None = None, max_atoms: int = MAX_ATOMS) -> ScreeningRequest:
        """From "Li-Mn-O" (and "LiMn2O4"): a UsageError names an unknown element, a formula outside the system, or
        a system no cell of ``max_atoms`` can hold."""
        elements = parse_chemical_system(system)
        if not elements:
            raise UsageError("a chemical system names at least one element, e.g. 'Li-Mn-O'")
        if len(elements) > MAX_ELEMENTS:
            raise UsageError(f"chemical system {system!r} has {len(elements)} elements: at most {MAX_ELEMENTS} "
                             "(MP-20's compounds, and the sources' prototypes, have fewer)")
        if not 1 <= max_atoms <= MAX_ATOMS:
            raise UsageError(f"max atoms per cell must be 1..{MAX_ATOMS} (MP-20's cells), got {max_atoms}")
        if len(elements) > max_atoms:
            raise UsageError(f"{len(elements)} elements do not fit in {max_atoms} atoms per cell")
        reduced = None
        if formula:
            from pymatgen.core import Composition

            try:
                composition = Composition(formula)
            except (ValueError, KeyError) as error:
                raise UsageError(f"formula {formula!r} is not a chemical formula ({error})") from None
            found = tuple(sorted(el.symbol for el in composition.elements))
            if found != elements:
                raise UsageError(f"formula {formula!r} is made of {'-'.join(found)}, not of the system "
                                 f"{'-'.join(elements)}")
            if composition.reduced_composition.num_atoms > max_atoms:
                raise UsageError(f"formula {formula!r}: one formula unit has more than {max_atoms} atoms")
            reduced = composition.reduced_formula
        return cls(elements, max_atoms, reduced)

    @property
    def system(self) -> str:
        return "-".join(self.elements)

    def holds(self, symbols: list[str] | tuple[str, ...], num_atoms: int | None = None) -> bool:
        """Whether a structure of these atoms is a candidate of the request: exactly its elements, its formula
        where one is asked for, and a cell within ``max_atoms``."""
        if tuple(sorted(set(symbols))) != self.elements:
            return False
        if num_atoms is not None and num_atoms > self.max_atoms:
            return False
        if self.formula is not None:
            from pymatgen.core import Composition

            return Composition("".join(symbols)).reduced_formula == self.formula
        return True

    def compositions(self) -> list[tuple[dict[str, int], dict[str, float]]]:
        """The compositions of the system a cell of at most ``max_atoms`` can hold: ``(atoms per cell, oxidation
        state per element)``, fewest atoms first.

        Ionic systems: charge-balanced with SMACT (`smact.neutral_ratios`) over each element's ICSD oxidation
        states (pymatgen's table; metals only as cations), passing SMACT's Pauling electronegativity test.
        All-metal systems: every composition (alloys and intermetallics are not charge-balanced; states 0).
        With ``formula``: its multiples, with pymatgen's likeliest oxidation states (mixed valence allowed, e.g.
        Mn 3.5 in LiMn2O4), or none if it cannot be balanced at all.
        """
        import itertools

        from pymatgen.core import Composition, Element

        if self.formula is not None:
            unit = Composition(self.formula)
            guesses = unit.oxi_state_guesses(max_sites=-self.max_atoms)
            if not guesses and not all(Element(e).is_metal for e in self.elements):
                return []
            states = {e: float(guesses[0][e]) for e in self.elements} if guesses else dict.fromkeys(self.elements, 0.0)
            return [({e: int(unit[e]) * k for e in self.elements}, states)
                    for k in range(1, int(self.max_atoms // unit.num_atoms) + 1)]
        if all(Element(e).is_metal for e in self.elements):
            counts = [c for c in itertools.product(range(1, self.max_atoms + 1), repeat=len(self.elements))
                      if sum(c) <= self.max_atoms]
            return [(dict(zip(self.elements, c)), dict.fromkeys(self.elements, 0.0))
                    for c in sorted(counts, key=lambda c: (sum(c), c))]
        import smact
        from smact.screening import pauling_test

        options = []
        for symbol in self.elements:
            element = Element(symbol)
            states = element.icsd_oxidation_states or element.common_oxidation_states
            options.append([s for s in states if s != 0 and (s > 0 or not element.is_metal)])
        electronegativities = [Element(e).X for e in self.elements]
        found: dict[tuple[int, ...], dict[str, float]] = {}
        for combo in itertools.product(*options):
            if not pauling_test(combo, electronegativities):
                continue
            for ratio in smact.neutral_ratios(combo, threshold=self.max_atoms):
                for multiple in range(1, self.max_atoms // sum(ratio) + 1):
                    counts = tuple(multiple * r for r in ratio)
                    found.setdefault(counts, {e: float(s) for e, s in zip(self.elements, combo)})
        return [(dict(zip(self.elements, counts)), found[counts]) for counts in sorted(found, key=lambda c: (sum(c), c))]

