"""chemgen's web app (``chemgen serve``): upload spectra for elucidation, run and browse crystal screening, see the
model registry.

The app holds no model logic: pages start Prefect flow runs (`chemgen.web.jobs`, one detached runner process per
job, `chemgen.web.runner`) and read what the flows wrote and what Prefect and MLflow store. Nothing about a job
lives in the server's memory, so a page reload or a server restart loses nothing.
"""
