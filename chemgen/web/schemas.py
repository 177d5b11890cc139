"""The JSON API's requests and answers as typed models, so that the OpenAPI schema (``/api/docs``) describes them.

The job submissions are multipart forms (files and fields), read by the app with its own size and count limits;
`ELUCIDATE_FORM` and `SCREEN_FORM` state their fields for the schema. Answers are pydantic models.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Error(BaseModel):
    error: str = Field(description="What is wrong, naming the file or field")


class JobSubmitted(BaseModel):
    job: str = Field(description="The job's id (32 hex digits)")
    url: str = Field(description="The job's page")


class Upload(BaseModel):
    name: str = Field(description="The file's name as uploaded")
    kind: str = Field(description="ir or raman")
    stored: str = Field(description="Where the server keeps it, inside the job's folder")


class JobRecord(BaseModel):
    id: str
    kind: str = Field(description="elucidation or screening")
    label: str
    params: dict[str, Any] = Field(description="The flow's parameters")
    uploads: list[Upload] = []
    workers: int = 1
    owner: str = "local"
    created: str


class JobStatus(BaseModel):
    job: JobRecord
    state: str = Field(description="submitted, queued, running, completed, failed or crashed")
    progress: float | None = Field(None, description="0..1 when the flow reported it")
    message: str = ""
    flow_run_id: str | None = Field(None, description="The Prefect flow run")
    prefect_state: str | None = None


ERRORS = {status: {"model": Error, "description": text} for status, text in (
    (400, "a bad upload or value"), (401, "not signed in"), (403, "CSRF check failed"), (404, "no such job"),
    (413, "a file over the size limit"), (415, "an unknown file type"), (429, "over the user's jobs a minute"))}


def _form(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


_FILE = {"type": "string", "format": "binary"}
ELUCIDATE_FORM = _form({
    "ir": {**_FILE, "description": "IR spectrum, JCAMP-DX or CSV"},
    "raman": {**_FILE, "description": "Raman spectrum, JCAMP-DX or CSV"},
    "formula": {"type": "string", "description": "Molecular formula, e.g. C7H8O2"},
    "sources": {"type": "array", "items": {"type": "string", "enum": ["library", "user", "model"]},
                "description": "Where candidates come from (default: every source that exists)"},
    "candidates": {**_FILE, "description": "Your candidate molecules: SMILES (one per line) or SDF"},
    "model": {"type": "string", "description": "A model the form offers (default: the first)"},
    "csrf_token": {"type": "string", "description": "Needed unless the request carries a bearer token"},
})
SCREEN_FORM = _form({
    "model": {"type": "string", "description": "A model the form offers (for the adit source)"},
    "n": {"type": "integer", "minimum": 1, "description": "Number of candidates, shared among the sources"},
    "chemical_system": {"type": "string", "description": "e.g. Li-Mn-O: every candidate holds exactly these elements"},
    "formula": {"type": "string", "description": "A reduced formula of the system, e.g. LiMn2O4 (optional)"},
    "sources": {"type": "array", "items": {"type": "string", "enum": ["adit", "substitution", "random"]},
                "description": "Where candidates come from (default: all three with a system, adit without)"},
    "structures": {**_FILE, "description": "Your own structures of the system: CIF or extxyz"},
    "csrf_token": {"type": "string", "description": "Needed unless the request carries a bearer token"},
})
