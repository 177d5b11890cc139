"""DiffSpectra as an MLflow pyfunc: a DataFrame of spectra in, ranked candidate structures out.

Logged as "models from code" (this file; `chemgen.models.protocol.ModelSpec.pyfunc` names it), with the
lineage folder as its artifact, as `chemgen.registry.generator_pyfunc` is for the unconditional models. Each request
row is one molecule's query:

``ir``, ``raman``
    its spectra as lists of 3,501 floats on the model grid (500-4,000 cm^-1 in 1 cm^-1 steps; km/mol per
    cm^-1 and A^4/amu per cm^-1 as chemgen computes them); either may be missing or null, not both
``formula`` (optional)
    its molecular formula: fixes every sample's atom count and filters the candidates
``num_samples``, ``seed``, ``num_steps``, ``top_k`` (optional)
    molecules sampled (default 100), the sampler's seed (default: the row number), ancestral steps (default:
    the config's), candidates kept (default 10); a column given for some rows only must be given for all (pandas
    stores a whole-number column with a gap as floats, which the signature refuses)

Each candidate is one output row: ``query`` (the request's row), ``rank``, ``smiles``, ``inchikey``,
``count`` (samples of this structure), ``fraction`` (of the query's valid samples), ``formula``. A query with
no valid sample has no rows. No re-ranking by computed spectra here (xTB takes seconds a candidate): that is
`chemgen elucidate`'s.

    model = mlflow.pyfunc.load_model("models:/chemgen-diffspectra@champion")
    frame = model.predict(pd.DataFrame([{"ir": ir.tolist(), "raman": raman.tolist(), "formula": "C7H8O2"}]))
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd

from chemgen.errors import UsageError

SPECTRUM_COLUMNS = ("ir", "raman")
REQUEST_COLUMNS = (*SPECTRUM_COLUMNS, "formula", "num_samples", "seed", "num_steps", "top_k")
OUTPUT_COLUMNS = ["query", "rank", "smiles", "inchikey", "count", "fraction", "formula"]


def signature() -> Any:
    """Spectra (arrays of doubles) and options in, one row per candidate out."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    inputs = [ColSpec(Array("double"), name, required=False) for name in SPECTRUM_COLUMNS]
    inputs += [ColSpec("string", "formula", required=False)]
    inputs += [ColSpec("long", name, required=False) for name in ("num_samples", "seed", "num_steps", "top_k")]
    types = {"query": "long", "rank": "long", "count": "long", "fraction": "double"}
    return ModelSignature(inputs=Schema(inputs),
                          outputs=Schema([ColSpec(types.get(c, "string"), c) for c in OUTPUT_COLUMNS]))


def _missing(value: Any) -> bool:
    if value is None:
        return True
    return bool(np.ndim(value) == 0 and pd.isna(value))


def _option(row: pd.Series, name: str, default: Any, index: int) -> Any:
    """A whole-number option of the row (``default`` when missing)."""
    value = row.get(name)
    if _missing(value):
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or float(value) != int(value):
        raise UsageError(f"query {index}: {name} must be a whole number, got {value!r}")
    return int(value)


def query_spectra(row: pd.Series, index: int) -> dict[str, np.ndarray]:
    """The row's spectra as arrays ({kind: (3501,)}); `UsageError` when it has none."""
    spectra = {k: np.asarray(row[k], dtype=np.float64) for k in SPECTRUM_COLUMNS
               if k in row.index and not _missing(row[k])}
    if not spectra:
        raise UsageError(f"query {index}: no spectrum (give column ir and/or raman: 3,501 values each)")
    return spectra


def validate_queries(frame: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise UsageError("queries must be a non-empty DataFrame with column ir and/or raman")
    unknown = sorted(set(frame.columns) - set(REQUEST_COLUMNS))
    if unknown:
        raise UsageError(f"unknown query column(s) {unknown} (known: {list(REQUEST_COLUMNS)})")
    if not set(SPECTRUM_COLUMNS) & set(frame.columns):
        raise UsageError("queries need column ir and/or raman (spectra of 3,501 values on the model grid)")
    return frame.reset_index(drop=True)


class ElucidationPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from chemgen.models.loading import load_lineage_model

        self.model = load_lineage_model(context.artifacts["model_dir"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from chemgen.elucidation.run import DEFAULT_SAMPLES, DEFAULT_TOP_K, elucidate_spectra

        queries = validate_queries(model_input)
        rows = []
        for index, row in queries.iterrows():
            formula = None if _missing(row.get("formula")) or row.get("formula") == "" else str(row["formula"])
            spectra = query_spectra(row, index)
            options = (_option(row, "num_samples", DEFAULT_SAMPLES, index), _option(row, "num_steps", None, index),
                       _option(row, "seed", index, index), _option(row, "top_k", DEFAULT_TOP_K, index))
            try:
                ranking = elucidate_spectra(self.model, spectra, formula, *options)
            except UsageError as err:   # a bad spectrum, formula or option: say which query
                raise UsageError(f"query {index}: {err}") from None
            rows += [{"query": index, "rank": c.rank, "smiles": c.smiles, "inchikey": c.inchikey, "count": c.count,
                      "fraction": c.fraction, "formula": c.formula} for c in ranking]
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS).astype({"query": "int64", "rank": "int64", "count": "int64",
                                                                  "fraction": "float64"})


mlflow.models.set_model(ElucidationPyfunc())
