"""Which molecule a sample is: a canonical key (InChIKey of the standardised tautomer) and molecular formulas.

A sampled 3D molecule becomes its key in five steps, all RDKit:

1. ``SanitizeMol`` on a copy (the caller's molecule is never changed); a molecule that does not sanitise
   has no key (``None``).
2. Stereochemistry: by default dropped (conformers and stereo tags removed), so enantiomers and cis/trans
   isomers share a key. IR and Raman spectra cannot tell enantiomers apart, stereo perceived from noisy
   sampled coordinates is fragile, and grouping by constitution is what elucidation asks first. InChI
   would otherwise read stereo from the 3D coordinates. ``stereo=True`` keeps it (assigned from the 3D
   conformer).
3. ``rdMolStandardize.Cleanup``: hydrogens removed, metals disconnected, functional groups normalised
   (``N(=O)=O`` and ``[N+](=O)[O-]`` become one nitro), charges reionised.
4. The charge-neutral form (``rdMolStandardize.Uncharger``): a zwitterion and its neutral form are one
   compound (``[NH3+]CC([O-])=O`` is glycine). For a net-neutral sample this moves hydrogens only, so the
   formula is kept; a net-charged sample gains or loses hydrogens and is keyed as its neutral parent.
   The fragment parent is not taken: a sample of several fragments is a wrong structure, not a salt, and
   `chemgen.elucidation.ranking` refuses it.
5. ``TautomerEnumerator().Canonicalize`` (as DiffSpectra's ``compute_metrics.py``), then
   ``MolToInchiKey``; the canonical SMILES is written from the same molecule.

Every step is deterministic, so the key is too. Keys compare only with keys made here with the same
``stereo`` setting: the spectra store's ``inchikey`` column comes from QM9's own InChI (stereo layer, no
tautomer canonicalisation) and is not one of them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from rdkit import Chem, rdBase
from rdkit.Chem import rdMolDescriptors
from rdkit.Chem.MolStandardize import rdMolStandardize

from chemgen.atoms import ATOMIC_NUMBERS
from chemgen.errors import UsageError


@dataclass(frozen=True, eq=False)
class CanonicalForm:
    """The identity of one molecule.

    inchikey : the key samples are grouped and scored by
    smiles : canonical SMILES of the canonical tautomer (hydrogens implicit)
    sampled_smiles : canonical SMILES of the molecule as it was given, after steps 1-4 (its own tautomer)
    mol : the canonical tautomer (hydrogens implicit; no conformer unless ``stereo``)
    """

    inchikey: str
    smiles: str
    sampled_smiles: str
    mol: Chem.Mol


@lru_cache(maxsize=1)
def _tools() -> tuple[rdMolStandardize.Uncharger, rdMolStandardize.TautomerEnumerator]:
    return rdMolStandardize.Uncharger(), rdMolStandardize.TautomerEnumerator()


def canonical_form(mol: Chem.Mol | None, stereo: bool = False) -> CanonicalForm | None:
    """The canonical tautomer, its SMILES and InChIKey; None when ``mol`` is None or does not sanitise."""
    if mol is None:
        return None
    uncharger, tautomers = _tools()
    with rdBase.BlockLogs():  # failures are answered with None, not printed
        try:
            work = Chem.Mol(mol)
            Chem.SanitizeMol(work)
            if stereo:
                if work.GetNumConformers() and work.GetConformer().Is3D():
                    Chem.AssignStereochemistryFrom3D(work)
            else:
                work.RemoveAllConformers()
                Chem.RemoveStereochemistry(work)
            work = uncharger.uncharge(rdMolStandardize.Cleanup(work))
            sampled_smiles = Chem.MolToSmiles(work)
            work = tautomers.Canonicalize(work)
            smiles = Chem.MolToSmiles(work)
            inchikey = Chem.MolToInchiKey(work)
        except (ValueError, RuntimeError):  # sanitisation errors derive from ValueError
            return None
    if not inchikey:  # InChI refused the molecule
        return None
    return CanonicalForm(inchikey, smiles, sampled_smiles, work)


def canonical_key(mol: Chem.Mol | None, stereo: bool = False) -> str | None:
    """InChIKey of the standardised, charge-neutral canonical tautomer (module docstring); None when the
    molecule does not sanitise."""
    form = canonical_form(mol, stereo)
    return None if form is None else form.inchikey


def canonical_smiles(mol: Chem.Mol | None, stereo: bool = False) -> str | None:
    """Canonical SMILES of the same canonical tautomer; None when the molecule does not sanitise."""
    form = canonical_form(mol, stereo)
    return None if form is None else form.smiles


# ---------------------------------------------------------------------------- formulas
_ELEMENT_COUNT = re.compile(r"([A-Z][a-z]?)(\d*)")


def parse_formula(text: str) -> Counter[str]:
    """Element counts of a formula such as ``C7H8O2`` (repeats add up: ``CH3CH2OH`` is C2H6O).

    Raises `UsageError` naming the problem: empty text, a character that is not part of an element
    symbol or count, an unknown element, a zero count, or a charge.
    """
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"molecular formula {text!r} is empty: give element symbols with counts, e.g. C7H8O2")
    compact = re.sub(r"\s+", "", text)
    counts: Counter[str] = Counter()
    position = 0
    while position < len(compact):
        match = _ELEMENT_COUNT.match(compact, position)
        if match is None:
            char = compact[position]
            if char in "+-":
                raise UsageError(f"molecular formula {text!r}: charges are not supported; give the neutral "
                                 "molecule's formula")
            raise UsageError(f"molecular formula {text!r}: unexpected {char!r} at character {position + 1} "
                             "(write element symbols with counts, e.g. C7H8O2; no brackets)")
        symbol, digits = match.groups()
        if symbol not in ATOMIC_NUMBERS:
            raise UsageError(f"molecular formula {text!r}: {symbol!r} is not an element symbol")
        count = int(digits) if digits else 1
        if count == 0:
            raise UsageError(f"molecular formula {text!r}: {symbol}0 has a count of zero")
        counts[symbol] += count
        position = match.end()
    return counts


def hill_formula(counts: Counter[str] | dict[str, int]) -> str:
    """Hill order, as RDKit's ``CalcMolFormula`` writes it: C, then H, then the rest alphabetically; without
    carbon, everything alphabetically."""
    symbols = sorted(s for s, n in counts.items() if n)
    if "C" in symbols:
        symbols = ["C"] + (["H"] if "H" in symbols else []) + [s for s in symbols if s not in ("C", "H")]
    return "".join(s + (str(counts[s]) if counts[s] > 1 else "") for s in symbols)


def normalise_formula(text: str) -> str:
    """A user's formula in Hill order (``OH2`` -> ``H2O``), checked by `parse_formula`."""
    return hill_formula(parse_formula(text))


def molecule_formula(mol: Chem.Mol) -> str:
    """Hill formula of a sanitised molecule, hydrogens counted whether explicit atoms or implicit."""
    return rdMolDescriptors.CalcMolFormula(mol)
