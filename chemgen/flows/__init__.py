"""chemgen's Prefect flows: curation, nightly retraining with registry gates, crystal screening, elucidation.

Flows call library functions and hold no maths. Prefect's embedded defaults (a project-local home and an
ephemeral server, `chemgen.flows.settings`) are set here, before any module of the package imports Prefect.
"""

from chemgen.flows import settings  # noqa: F401
