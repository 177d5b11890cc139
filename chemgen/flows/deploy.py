"""Deployments of chemgen's flows: the one definition of their names, flows, schedules, parameters and tags.

``chemgen flows serve`` serves them from this process (no work pool needed): the nightly retraining on a
cron schedule, screening and curation on demand. Teams with a Prefect server use ``prefect.yaml`` (process
or Kubernetes work pools), which is generated from `DEPLOYMENTS` here::

    python -m chemgen.flows.deploy --write-prefect-yaml prefect.yaml     # or: make prefect-yaml

and a test fails when the committed file differs from what that writes, so the two cannot drift.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chemgen.flows import settings  # noqa: F401

from prefect import Flow, serve

import chemgen
from chemgen.flows.curate import curate_all
from chemgen.flows.elucidate import elucidate_batch
from chemgen.flows.retrain import nightly_retrain
from chemgen.flows.screen import DEFAULT_WORKERS, crystal_screening
from chemgen.flows.spectra import curate_spectra_flow

NIGHTLY_CRON = "0 2 * * *"  # 02:00 every night, server time zone
PROCESS_POOL = "chemgen-process"
KUBERNETES_POOL = "chemgen-k8s"
KUBERNETES_IMAGE = f"registry.example.org/chemgen:{chemgen.__version__}"  # an example: the team's own image
# An installed chemgen has no checkout around it (chemgen.paths): the pod names its data, weights and state,
# all on one volume mounted at /data.
KUBERNETES_ENV = {"MLFLOW_TRACKING_URI": "{{ $MLFLOW_TRACKING_URI }}", "CHEMGEN_HOME": "/data/chemgen",
                  "CHEMGEN_DATA_DIR": "/data/shared/data", "CHEMGEN_WEIGHTS_DIR": "/data/weights"}


@dataclass(frozen=True)
class Deployment:
    """One deployment of one flow; ``kubernetes`` adds a ``<name>-k8s`` twin on the Kubernetes pool in
    prefect.yaml (served deployments run in the serving process, so only the first is served)."""

    name: str
    flow: Flow
    tags: tuple[str, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    kubernetes: bool = False
    description: str = ""

    @property
    def entrypoint(self) -> str:
        """``chemgen/flows/screen.py:crystal_screening``, relative to the repository root."""
        return f"{self.flow.fn.__module__.replace('.', '/')}.py:{self.flow.fn.__name__}"


DEPLOYMENTS: tuple[Deployment, ...] = (
    Deployment("nightly", nightly_retrain, ("chemgen", "retrain"), {"profile": "nightly"}, cron=NIGHTLY_CRON,
               kubernetes=True, description="Retrain on freshly curated data; promote only past the gate."),
    Deployment("on-demand", crystal_screening, ("chemgen", "screening"),
               {"n": 200, "workers": DEFAULT_WORKERS}, kubernetes=True,
               description="Candidates of a chemical system from every source, relaxed and ranked together."),
    Deployment("on-demand", curate_all, ("chemgen", "data"),
               description="Curate every dataset; unchanged input reuses its version."),
    Deployment("on-demand", curate_spectra_flow, ("chemgen", "data", "spectra"), {"workers": 1},
               description="Compute the QM9 xTB spectra no shard covers yet."),
    Deployment("on-demand", elucidate_batch, ("chemgen", "elucidation"),
               description="Candidate structures for uploaded spectra, from every source, with their confidence."),
)


def _with_profile(spec: Deployment, profile: str) -> dict[str, Any]:
    return {**spec.parameters, "profile": profile} if "profile" in spec.parameters else dict(spec.parameters)


def deployments(profile: str = "nightly", cron: str = NIGHTLY_CRON) -> list:
    """`DEPLOYMENTS` as deployments that `serve` runs (``profile`` and ``cron`` change the nightly one)."""
    return [spec.flow.to_deployment(name=spec.name, tags=list(spec.tags), parameters=_with_profile(spec, profile),
                                    cron=cron if spec.cron else None, description=spec.description or None)
            for spec in DEPLOYMENTS]


def serve_all(profile: str = "nightly", cron: str = NIGHTLY_CRON) -> None:
    """Serve every deployment until interrupted."""
    serve(*deployments(profile, cron))


PREFECT_YAML_HEADER = """\
# GENERATED from chemgen/flows/deploy.py (DEPLOYMENTS): edit that, then `make prefect-yaml`
# (python -m chemgen.flows.deploy --write-prefect-yaml prefect.yaml). A test fails when this file differs.
#
# Prefect deployments for teams running a Prefect server (PREFECT_API_URL set).
#   prefect work-pool create chemgen-process --type process
#   CHEMGEN_REPO=$PWD prefect deploy --all    # from the repository root (workers run the flows there)
#   prefect worker start --pool chemgen-process
# For Kubernetes, create a pool of type kubernetes named chemgen-k8s, build the image below with the
# repository's Dockerfile (`docker build -t <image> .`, pushed to your registry under that name), then deploy
# the *-k8s entries. An installed chemgen does not guess where data and weights are: the pod's env names
# them (a volume at /data).
"""


def prefect_yaml_spec(kubernetes: bool = True, directory: str = "{{ $CHEMGEN_REPO }}") -> dict[str, Any]:
    """prefect.yaml's content: every deployment on the process pool, and (``kubernetes``) the Kubernetes twins;
    a worker runs each flow in ``directory`` (where ``chemgen/`` is; by default the CHEMGEN_REPO variable of the
    shell that deploys, which `prefect deploy` fills in)."""
    entries = []
    for spec in DEPLOYMENTS:
        base: dict[str, Any] = {"name": spec.name, "description": spec.description, "entrypoint": spec.entrypoint}
        if spec.parameters:
            base["parameters"] = dict(spec.parameters)
        if spec.cron:
            base["schedules"] = [{"cron": spec.cron}]
        base["tags"] = list(spec.tags)
        entries.append({**base, "work_pool": {"name": PROCESS_POOL}})
    for spec in DEPLOYMENTS:
        if spec.kubernetes and kubernetes:
            base = next(e for e in entries if e["entrypoint"] == spec.entrypoint and e["name"] == spec.name)
            entries.append({**copy.deepcopy(base), "name": f"{spec.name}-k8s", "work_pool": {
                "name": KUBERNETES_POOL, "job_variables": {"image": KUBERNETES_IMAGE, "env": dict(KUBERNETES_ENV)}}})
    return {"name": "chemgen", "prefect-version": _prefect_version(),
            "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": directory}}],
            "deployments": entries}


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def render_prefect_yaml(kubernetes: bool = True, directory: str = "{{ $CHEMGEN_REPO }}") -> str:
    """The text of prefect.yaml (deterministic: the committed file must equal it)."""
    import yaml

    return PREFECT_YAML_HEADER + "\n" + yaml.safe_dump(prefect_yaml_spec(kubernetes, directory), sort_keys=False,
                                                       width=110)


def check_parameters() -> list[str]:
    """Problems with `DEPLOYMENTS`: parameters a flow does not take (they would fail only when a run starts)."""
    problems = []
    for spec in DEPLOYMENTS:
        accepted = set(inspect.signature(spec.flow.fn).parameters)
        problems += [f"{spec.flow.name}/{spec.name}: {spec.flow.fn.__name__} has no parameter {key!r}"
                     for key in spec.parameters if key not in accepted]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chemgen.flows.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-prefect-yaml", type=Path, metavar="PATH",
                        help="write prefect.yaml, generated from DEPLOYMENTS, to PATH")
    parser.add_argument("--check-prefect-yaml", type=Path, metavar="PATH",
                        help="exit 1 if PATH differs from what --write-prefect-yaml would write")
    args = parser.parse_args(argv)
    problems = check_parameters()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    text = render_prefect_yaml()
    if args.check_prefect_yaml:
        current = args.check_prefect_yaml.read_text() if args.check_prefect_yaml.is_file() else None
        if current != text:
            print(f"{args.check_prefect_yaml} is out of date: run `make prefect-yaml`", file=sys.stderr)
            return 1
    if args.write_prefect_yaml:
        from chemgen.io import atomic_write

        with atomic_write(args.write_prefect_yaml) as handle:
            handle.write(text)
        print(f"wrote {args.write_prefect_yaml} ({len(prefect_yaml_spec()['deployments'])} deployments)")
    if not (args.write_prefect_yaml or args.check_prefect_yaml):
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
