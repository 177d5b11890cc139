"""chemgen's Prefect flows: curation, nightly retraining with registry gates, crystal screening.

Flows call library functions and hold no maths. Import `chemgen.flows.settings` first (every
module here does): it points Prefect at a project-local home and embedded server.
"""
