"""What the web pages show of the MLflow model registry: models, versions, aliases, gate metrics and decisions,
and the models a user may pick for a job (only these: a form value outside them is refused, never a path)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from chemgen import gates, tracking

SHIPPED = "shipped"      # the form's value for the checkpoint that ships with chemgen (a folder the server knows)
SHIPPED_CONFIGS = {"screening": "adit-gpu-quick", "elucidation": "diffspectra-cpu"}
MODEL_PREFIXES = {"screening": "chemgen-adit", "elucidation": "chemgen-diffspectra"}


@dataclass(frozen=True)
class VersionView:
    version: str
    aliases: tuple[str, ...]
    created: str
    run_id: str | None
    decision: str
    metrics: dict[str, float] = field(default_factory=dict)
    ui_url: str | None = None


@dataclass(frozen=True)
class ModelView:
    name: str
    description: str
    versions: tuple[VersionView, ...]
    ui_url: str | None = None

    @property
    def champion(self) -> str | None:
        return next((v.version for v in self.versions if tracking.CHAMPION in v.aliases), None)


def _ui(base: str | None, *parts: str) -> str | None:
    return None if not base else base.rstrip("/") + "/#/models/" + "/".join(quote(p, safe="") for p in parts)


def _version(name: str, found: Any, client: Any, ui: str | None) -> VersionView:
    v = client.get_model_version(name, found.version)  # search results omit aliases
    try:
        metrics = gates.recorded_in_tags(name, v.version, v.tags)
    except gates.GateError:
        metrics = {}
    return VersionView(str(v.version), tuple(v.aliases),
                       datetime.fromtimestamp(v.creation_timestamp / 1000).isoformat(timespec="seconds"),
                       v.run_id, v.tags.get(gates.DECISION_TAG, ""), metrics,
                       _ui(ui, name, "versions", str(v.version)))


def models(ui: str | None = None) -> list[ModelView]:
    """Every registered model with its versions, newest version first."""
    client = tracking.client()
    views = []
    for model in sorted(client.search_registered_models(), key=lambda m: m.name):
        versions = sorted(client.search_model_versions(f"name='{model.name}'"), key=lambda v: -int(v.version))
        views.append(ModelView(model.name, model.description or "",
                               tuple(_version(model.name, v, client, ui) for v in versions), _ui(ui, model.name)))
    return views


def model(name: str, ui: str | None = None) -> ModelView:
    """One registered model; `tracking.RegistryError` if there is none of that name."""
    tracking.require_model(name)
    return next(m for m in models(ui) if m.name == name)


def _registered_aliases() -> list[tuple[str, str, int]]:
    """(model name, alias, version) of every alias in the registry, in one query."""
    return [(m.name, alias, version) for m in tracking.client().search_registered_models()
            for alias, version in m.aliases.items()]


def job_models(kind: str) -> dict[str, str]:
    """{form value: label} of the models a job of ``kind`` may run: every alias of a registered model of that
    family, champions first, then the shipped checkpoint."""
    choices = {}
    try:
        for name, alias, version in _registered_aliases():
            if name.startswith(MODEL_PREFIXES[kind]):
                choices[f"models:/{name}@{alias}"] = f"{name} @ {alias} (version {version})"
    except Exception:  # noqa: BLE001 - an unreachable registry still leaves the shipped checkpoint
        pass
    # the default (first) is a champion, the production name's before a profile's (chemgen-adit before -demo)
    ordered = dict(sorted(choices.items(), key=lambda item: (not item[0].endswith("@champion"), len(item[0]), item[0])))
    ordered[SHIPPED] = f"the checkpoint that ships with chemgen ({SHIPPED_CONFIGS[kind]})"
    return ordered


def flow_model(kind: str, value: str) -> str:
    """The flow's ``model`` argument for a value `job_models` offered: the registry URI itself, or the shipped
    checkpoint's folder (found by the server, never named by the client)."""
    if value == SHIPPED:
        from chemgen.lineage import shipped_lineage

        return str(shipped_lineage(SHIPPED_CONFIGS[kind]))
    return value
