"""Any chemgen generator as an MLflow pyfunc: a DataFrame of requests in, a DataFrame of structures out.

Logged as "models from code" (this file), so loading a registered model runs this module
rather than unpickling an object; its artifact is the model's lineage folder (safetensors weights
and a manifest naming the model). Requests have columns ``n`` and ``dataset`` (a dataset the
model was trained on: qm9, mp20, perov5, ...) or ``kind`` (molecule = qm9, crystal = mp20), and
optionally ``seed``, ``num_steps``, ``cfg_scale``, ``solver``. Each generated structure is one
output row: ``request``, ``sample``, ``dataset``, ``kind``, ``formula``, ``num_atoms``,
``smiles`` and ``inchikey`` (molecules whose EDM distance-table molecule sanitises), ``cif``
(crystals), ``xyz`` (extended XYZ of every structure), ``failure`` (why a sample is no
structure at all, else empty).

    model = mlflow.pyfunc.load_model("models:/chemgen-adit@champion")
    frame = model.predict(pd.DataFrame([{"dataset": "mp20", "n": 10, "seed": 0}]))
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd

from chemgen.errors import UsageError

REQUEST_COLUMNS = {"dataset": str, "kind": str, "n": int, "seed": int, "num_steps": int, "cfg_scale": float,
                   "solver": str}
OUTPUT_COLUMNS = ["request", "sample", "dataset", "kind", "formula", "num_atoms", "smiles", "inchikey", "cif", "xyz", "failure"]
MAX_SAMPLES_PER_REQUEST = 10_000


def signature() -> Any:
    """The registered model's signature: the request columns in, one row per structure out."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "dataset", required=False), ColSpec("string", "kind", required=False),
                       ColSpec("long", "n"), ColSpec("long", "seed", required=False),
                       ColSpec("long", "num_steps", required=False), ColSpec("double", "cfg_scale", required=False),
                       ColSpec("string", "solver", required=False)]),
        outputs=Schema([ColSpec("long" if c in ("request", "sample", "num_atoms") else "string", c)
                        for c in OUTPUT_COLUMNS]))


class GeneratorPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from chemgen.models.loading import load_lineage_model

        self.model = load_lineage_model(context.artifacts["model_dir"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from chemgen.sampling.tables import structure_rows
        from chemgen.samples import to_systems

        requests = validate_requests(model_input)
        frames = []
        for index, request in requests.iterrows():
            decoded = self.model.generate(
                int(request["n"]), request["dataset"], seed=int(request["seed"]),
                num_steps=_optional_int(request.get("num_steps")), cfg_scale=_optional_float(request.get("cfg_scale")),
                solver=request.get("solver") or None)
            rows = structure_rows(to_systems(decoded, request["dataset"]), request["kind"])
            frames.append(pd.DataFrame(rows).assign(request=index, dataset=request["dataset"]))
        return pd.concat(frames, ignore_index=True)[OUTPUT_COLUMNS]


def validate_requests(frame: pd.DataFrame) -> pd.DataFrame:
    from chemgen.datasets import resolve_dataset

    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise UsageError("requests must be a non-empty DataFrame with columns 'n' and 'dataset' (or 'kind')")
    if "n" not in frame.columns or not {"dataset", "kind"} & set(frame.columns):
        raise UsageError("requests need column 'n' and column 'dataset' (qm9, mp20, ...) or 'kind' (molecule, crystal)")
    unknown = set(frame.columns) - set(REQUEST_COLUMNS)
    if unknown:
        raise UsageError(f"unknown request column(s) {sorted(unknown)} (known: {sorted(REQUEST_COLUMNS)})")
    frame = frame.reset_index(drop=True).copy()
    named = frame["dataset"] if "dataset" in frame else pd.Series([None] * len(frame))
    asked = [d if isinstance(d, str) and d else k for d, k in zip(named, frame.get("kind", named))]
    resolved = []
    for row, name in enumerate(asked):
        try:
            resolved.append(resolve_dataset(str(name)))
        except ValueError as err:
            raise UsageError(f"request {row}: {err}") from None
    frame["dataset"], frame["kind"] = [d for d, _ in resolved], [k for _, k in resolved]
    if ((frame["n"] < 1) | (frame["n"] > MAX_SAMPLES_PER_REQUEST)).any():
        raise UsageError(f"n must lie in 1..{MAX_SAMPLES_PER_REQUEST}")
    if "seed" not in frame:
        frame["seed"] = range(len(frame))
    return frame


def _optional_int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


mlflow.models.set_model(GeneratorPyfunc())
