"""The FastAPI app of ``chemgen serve``: server-rendered pages over jobs (Prefect flow runs) and the registry.

Pages: ``/`` (recent jobs), ``/elucidate`` (upload spectra), ``/screen`` (start a crystal screening),
``/jobs/{id}`` (a job's progress, then its results), ``/models`` (the registry). JSON: ``/api/jobs/{id}``,
``POST /api/elucidate`` and ``POST /api/screen`` (the forms' twins), ``/healthz``, ``/login``.

Who asks is settled before anything else (`chemgen.web.auth`): each user sees, polls and downloads only their own
jobs (another user's job is a 404), every form carries a CSRF token, and job submissions are rate-limited per user.

Uploads are checked before a job exists: size and count limits, a known file type, then chemgen's own spectrum
reader on the stored copy (an error names the file as the user called it and the problem, HTTP 400 / 413).
Stored files get server-made names; only job ids (32 hex digits) and files listed inside a job's folder are ever
looked up from a URL.
"""

from __future__ import annotations

import csv
import html
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from chemgen.errors import ChemgenError
from chemgen.web import auth, jobs, registry, schemas
from chemgen.web.settings import WebSettings

HERE = Path(__file__).parent
SPECTRUM_SUFFIXES = (".jdx", ".dx", ".jcamp", ".csv", ".txt", ".tsv")
UPLOAD_KINDS = {"ir": "IR", "raman": "Raman"}
CANDIDATE_SUFFIXES = (".smi", ".smiles", ".txt", ".sdf")
DOWNLOAD_TYPES = {".csv": "text/csv", ".sdf": "chemical/x-mdl-sdfile", ".cif": "chemical/x-cif",
                  ".png": "image/png", ".md": "text/markdown", ".json": "application/json"}


class UploadProblem(ChemgenError, ValueError):
    """An upload the server refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


async def _start(folder: Path, settings: WebSettings) -> None:
    """Run a committed job: a runner process of this server's, or a deployment run on the team's Prefect pool (a
    submission the server cannot make fails the job, with the reason on its page)."""
    if not settings.start_jobs:
        return
    if settings.dispatch == "runner":
        jobs.start_runner(folder)
        return
    from chemgen.web import runner

    try:
        await run_in_threadpool(runner.dispatch_deployment, folder)
    except Exception as error:  # noqa: BLE001 - the job records why it never ran
        jobs.write_json(folder / "error.json", {"error": f"could not submit the flow run: {error}"})


def check_csrf(request: Request, form: Any) -> None:
    """The form's (or the X-CSRF-Token header's) token must equal the chemgen_csrf cookie (`chemgen.web.auth`)."""
    submitted = form.get(auth.CSRF_FIELD) or request.headers.get("x-csrf-token")
    if not auth.csrf_ok(request.cookies.get(auth.CSRF_COOKIE), submitted):
        raise UploadProblem("this form is stale or was not sent from chemgen's own page (CSRF check): reload it "
                            "and send it again", 403)


# ---------------------------------------------------------------------------- uploads
async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    """The file's bytes, refusing more than ``limit`` without reading the rest."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise UploadProblem(f"{upload.filename}: larger than the {limit / 1e6:.0f} MB limit per file", 413)
    return data


def _stored_name(index: int, filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix not in SPECTRUM_SUFFIXES:
        raise UploadProblem(f"{filename}: unknown spectrum file type {suffix or '(none)'!r}; upload JCAMP-DX "
                            f"({', '.join(SPECTRUM_SUFFIXES[:3])}) or CSV ({', '.join(SPECTRUM_SUFFIXES[3:])})", 415)
    return f"uploads/file-{index}{suffix}"


def _check_query(staging: Path, uploads: list[dict[str, str]], formula: str | None) -> None:
    """chemgen's reader on the stored copies; its message names the stored file, shown as the user's name."""
    from chemgen.elucidation.run import QueryFile, check_formula, read_query

    try:
        check_formula(formula)
        read_query([QueryFile(staging / u["stored"], u["kind"]) for u in uploads])
    except ChemgenError as error:
        message = str(error)
        for u in uploads:
            message = message.replace(str(staging / u["stored"]), u["name"])
        raise UploadProblem(message) from None


def _chosen_model(form: Any, kind: str) -> tuple[str, str]:
    """(the flow's model argument, its label) for the form's model, which must be one the form offered (default:
    the first)."""
    choices = registry.job_models(kind)
    value = str(form.get("model") or next(iter(choices)))
    if value not in choices:
        raise UploadProblem(f"unknown model {value!r}; choose one of the list")
    return registry.flow_model(kind, value), choices[value]


def _chosen_sources(form: Any) -> list[str] | None:
    """The sources the form ticked; None (every source that exists) when all or none are (a form leaves unticked
    boxes out, so none ticked reads like an API client that does not say)."""
    from chemgen.elucidation.pooling import SOURCES, parse_sources

    ticked = [str(v) for v in form.getlist("sources")]
    try:
        chosen = parse_sources(ticked)
    except ValueError as err:
        raise UploadProblem(str(err)) from None
    return None if chosen is None or set(chosen) == set(SOURCES) else list(chosen)


def _check_candidates(staging: Path, stored: str, display: str, limit: int) -> int:
    """The candidates file read as the job will read it: the number of molecules, or an error naming the file
    (empty, over ``limit``, unreadable). Lines that cannot be computed are the job's to report, one by one."""
    from chemgen.spectra.user_library import read_entries

    try:
        entries = read_entries(staging / stored, limit=limit)
    except ChemgenError as error:
        raise UploadProblem(str(error).replace(str(staging / stored), display)) from None
    return len(entries)


async def _stored_candidates(staging: Path, upload: UploadFile, settings: WebSettings) -> tuple[str, str]:
    display = Path(upload.filename).name[:120]
    suffix = Path(display).suffix.lower()
    if suffix not in CANDIDATE_SUFFIXES:
        raise UploadProblem(f"{display}: unknown candidates file type {suffix or '(none)'!r}; upload SMILES "
                            f"(one per line: {', '.join(CANDIDATE_SUFFIXES[:3])}) or SDF (.sdf)", 415)
    stored = f"uploads/candidates{suffix}"
    (staging / stored).write_bytes(await _read_upload(upload, settings.max_upload_bytes))
    await run_in_threadpool(_check_candidates, staging, stored, display, settings.max_user_candidates)
    return stored, display


async def _elucidation_job(request: Request) -> str:
    settings: WebSettings = request.app.state.settings
    form = await request.form(max_files=settings.max_files, max_fields=10)
    model, _ = await run_in_threadpool(_chosen_model, form, "elucidation")
    formula = str(form.get("formula") or "").strip() or None
    sources = _chosen_sources(form)
    candidates = form.get("candidates")
    candidates = candidates if isinstance(candidates, UploadFile) and candidates.filename else None
    if candidates is not None and sources is not None and "user" not in sources:
        raise UploadProblem("a candidates file was uploaded but 'your own libraries' is not ticked")
    files = [(kind, form.get(kind)) for kind in UPLOAD_KINDS]
    files = [(kind, f) for kind, f in files if isinstance(f, UploadFile) and f.filename]
    if not files:
        raise UploadProblem("no spectrum uploaded: give an IR and/or a Raman spectrum (JCAMP-DX or CSV)")
    job_id, staging = jobs.new_staging(settings.jobs_dir)
    try:
        uploads = []
        for index, (kind, upload) in enumerate(files, start=1):
            display = Path(upload.filename).name[:120]
            stored = _stored_name(index, display)
            (staging / stored).write_bytes(await _read_upload(upload, settings.max_upload_bytes))
            uploads.append({"name": display, "kind": kind, "stored": stored})
        await run_in_threadpool(_check_query, staging, uploads, formula)
        params = {**settings.elucidation, "formula": formula, "model": model, "sources": sources}
        label = " + ".join(f"{UPLOAD_KINDS[u['kind']]}: {u['name']}" for u in uploads)
        if candidates is not None:
            stored, display = await _stored_candidates(staging, candidates, settings)
            params.update(candidates=stored, candidate_limit=settings.max_user_candidates)
            label += f" + candidates: {display}"
        folder = jobs.commit_job(staging, "elucidation", params, label + (f" ({formula})" if formula else ""),
                                 uploads, settings.workers, owner=request.state.user)
    except BaseException:
        jobs.discard_staging(staging)
        raise
    await _start(folder, settings)
    return job_id


STRUCTURE_SUFFIXES = (".cif", ".extxyz", ".xyz")
SCREENING_SOURCES = ("adit", "substitution", "random")


def _check_structures(staging: Path, stored: str, display: str, params: dict[str, Any]) -> int:
    """The uploaded structures read as the flow will read them: their number, or an error naming the file and the
    structure (a partial occupancy, an absurd cell, another chemical system)."""
    from chemgen.screening import uploads
    from chemgen.screening.request import ScreeningRequest

    request = ScreeningRequest.parse(params["chemical_system"], params.get("formula"))
    try:
        return len(uploads.generate(request, [staging / stored]).candidates)
    except ChemgenError as error:
        raise UploadProblem(str(error).replace(str(staging / stored), display).replace(Path(stored).name, display)) \
            from None


async def _screening_job(request: Request) -> str:
    from chemgen.screening.request import ScreeningRequest

    settings: WebSettings = request.app.state.settings
    form = await request.form(max_files=1, max_fields=20)
    model, model_label = await run_in_threadpool(_chosen_model, form, "screening")
    try:
        n = int(str(form.get("n") or "20"))
    except ValueError:
        raise UploadProblem(f"number of candidates must be a whole number, got {form.get('n')!r}") from None
    if not 1 <= n <= settings.max_screening_candidates:
        raise UploadProblem(f"number of candidates must be 1 to {settings.max_screening_candidates}, got {n}")
    system = str(form.get("chemical_system") or "").strip() or None
    formula = str(form.get("formula") or "").strip() or None
    ticked = [str(s) for s in form.getlist("sources")]
    if any(s not in SCREENING_SOURCES for s in ticked):
        raise UploadProblem(f"unknown source in {ticked}: choose from {', '.join(SCREENING_SOURCES)}")
    structures = form.get("structures")
    structures = structures if isinstance(structures, UploadFile) and structures.filename else None
    if system is None and (formula or structures is not None or set(ticked) - {"adit"}):
        raise UploadProblem("substitution, random structures, a formula and your own structures need a chemical "
                            "system (e.g. Li-Mn-O)")
    if system is not None:
        ScreeningRequest.parse(system, formula)   # a UsageError names the unknown symbol or the formula
    params = {**settings.screening, "n": n, "chemical_system": system, "model": model, "formula": formula,
              "sources": ticked or None}
    sources = ", ".join(ticked or (["adit", "substitution", "random"] if system else ["adit"]))
    label = f"{n} crystals ({sources}{', ' + model_label.split(' (')[0] if 'adit' in sources else ''})" + (
        f", {system}" if system else "") + (f" {formula}" if formula else "")
    job_id, staging = jobs.new_staging(settings.jobs_dir)
    try:
        if structures is not None:
            display = Path(structures.filename).name[:120]
            suffix = Path(display).suffix.lower()
            if suffix not in STRUCTURE_SUFFIXES:
                raise UploadProblem(f"{display}: unknown structure file type {suffix or '(none)'!r}; upload CIF or "
                                    "extxyz", 415)
            stored = f"uploads/structures{suffix}"
            (staging / "uploads").mkdir(parents=True, exist_ok=True)
            (staging / stored).write_bytes(await _read_upload(structures, settings.max_upload_bytes))
            count = await run_in_threadpool(_check_structures, staging, stored, display, params)
            params["uploads"] = [stored]
            label += f" + {count} of yours ({display})"
        folder = jobs.commit_job(staging, "screening", params, label, workers=settings.workers,
                                 owner=request.state.user)
    except BaseException:
        jobs.discard_staging(staging)
        raise
    await _start(folder, settings)
    return job_id


# ---------------------------------------------------------------------------- results
def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _depiction(smiles: str) -> str:
    """An RDKit SVG of the molecule (escaped text when RDKit cannot parse it)."""
    from rdkit import Chem
    from rdkit.Chem.Draw import rdMolDraw2D

    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None:
        return f"<span class='muted'>{html.escape(smiles)}</span>"
    drawer = rdMolDraw2D.MolDraw2DSVG(180, 140)
    drawer.DrawMolecule(mol)
    drawer.FinishDrawing()
    svg = drawer.GetDrawingText()
    return svg[svg.find("<svg"):]  # without the XML declaration, to sit inline


def _sdf_blocks(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [b.strip("\n") + "\n" for b in path.read_text().split("$$$$") if b.strip()]


def elucidation_results(folder: Path) -> dict[str, Any]:
    result = jobs.read_json(folder / "result.json")
    query = result["queries"][0]
    rel = Path("out") / Path(query["out_dir"]).name   # the runner puts the flow's folder at <job>/out
    rows = _read_csv(folder / rel / "candidates.csv")
    blocks = _sdf_blocks(folder / rel / "candidates.sdf")
    for row, block in zip(rows, blocks, strict=False):
        row["molblock"] = block
    for row in rows:
        row["svg"] = _depiction(row.get("smiles", ""))
        row["image_path"] = f"{rel}/{row['image']}" if row.get("image") else ""
    summary = jobs.read_json(folder / rel / "query.json") if query.get("status") == "done" else {}
    uploaded = None
    if result.get("candidates"):   # the chemist's candidates file: its counts, and every line that failed, why
        lines = _read_csv(folder / "out" / "candidates" / "lines.csv")
        uploaded = {**result["candidates"], "lines": "out/candidates/lines.csv",
                    "problems": [line for line in lines if line.get("status") != "ok"]}
    return {"query": query, "candidates": rows, "dir": str(rel), "summary": summary, "uploaded": uploaded}


def screening_results(folder: Path) -> dict[str, Any]:
    result = jobs.read_json(folder / "result.json")
    rows = _read_csv(folder / "out" / "candidates.csv")
    metrics = {k: v for k, v in result.get("metrics", {}).items()
               if isinstance(v, (int, float)) and not k.startswith("source/")}
    sources = {name: values for name, values in result.get("sources", {}).items() if name != "pooled"}
    return {"candidates": rows, "metrics": metrics, "sources": sources, "pooled": result.get("sources", {}).get("pooled"),
            "plot": "out/e_above_hull.png" if (folder / "out" / "e_above_hull.png").is_file() else None}


# ---------------------------------------------------------------------------- app
def create_app(settings: WebSettings | None = None) -> FastAPI:
    settings = settings or WebSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import asyncio

        settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        if settings.start_jobs and settings.dispatch == "runner":
            jobs.resume_submitted(settings.jobs_dir)
        if settings.start_jobs:
            jobs.warm_up_prefect()
        expiring = None
        if settings.retention_days is not None:
            async def expire_hourly() -> None:
                while True:
                    await run_in_threadpool(jobs.expire_jobs, settings.jobs_dir, settings.retention_days)
                    await asyncio.sleep(3600)

            expiring = asyncio.create_task(expire_hourly())
        yield
        if expiring is not None:
            expiring.cancel()

    app = FastAPI(title="chemgen", lifespan=lifespan, docs_url="/api/docs", redoc_url=None)
    app.state.settings = settings
    store = auth.UserStore(settings.home)
    limiter = auth.RateLimiter(settings.jobs_per_minute)
    app.state.limiter = limiter
    templates = Jinja2Templates(directory=HERE / "templates")

    public = ("/healthz", "/static/", "/vendor/", "/login")

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        path = request.url.path
        user, bearer = auth.identify(request, settings, store)
        request.state.user, request.state.bearer = user, bearer
        fresh = auth.CSRF_COOKIE not in request.cookies
        request.state.csrf = request.cookies.get(auth.CSRF_COOKIE) or auth.new_csrf_token()
        if user is None and not path.startswith(public) and path != "/":
            if path.startswith("/api/"):
                return JSONResponse({"error": "not signed in: send Authorization: Bearer TOKEN (chemgen users add)"},
                                    status_code=401)
            return RedirectResponse(f"/login?next={quote(path)}", status_code=303)
        if user is None and path == "/":
            return RedirectResponse("/login", status_code=303)
        response = await call_next(request)
        if fresh:
            response.set_cookie(auth.CSRF_COOKIE, request.state.csrf, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        return response

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> Response:
        return page(request, "login.html", next=next if next.startswith("/") and not next.startswith("//") else "/")

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=4)
        check_csrf(request, form)
        if settings.auth != "token":
            raise HTTPException(400, f"this server authenticates by {settings.auth}, not by token")
        token = str(form.get("token") or "").strip()
        if store.user_for(token) is None:
            raise HTTPException(401, "unknown or revoked token")
        target = str(form.get("next") or "/")
        response = RedirectResponse(target if target.startswith("/") and not target.startswith("//") else "/", 303)
        response.set_cookie(auth.TOKEN_COOKIE, token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", max_age=30 * 24 * 3600)
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        check_csrf(request, await request.form(max_files=0, max_fields=2))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(auth.TOKEN_COOKIE)
        return response
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"settings": settings, **context}, status_code=status)

    def _with_states(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "state": jobs.job_state(settings.jobs_dir / r["id"]).state} for r in records]

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    @app.exception_handler(UploadProblem)
    async def upload_problem(request: Request, error: UploadProblem) -> Response:
        if wants_json(request):
            return JSONResponse({"error": str(error)}, status_code=error.status)
        return page(request, "error.html", error.status, title="This upload cannot be used", message=str(error))

    @app.exception_handler(ChemgenError)
    async def chemgen_error(request: Request, error: ChemgenError) -> Response:
        status = 404 if isinstance(error, LookupError) else 400   # no such job, file or registered model
        if wants_json(request):
            return JSONResponse({"error": str(error)}, status_code=status)
        return page(request, "error.html", status, title="Not found" if status == 404 else "Bad request",
                    message=str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if wants_json(request):
            return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)
        return page(request, "error.html", error.status_code, title=f"Error {error.status_code}",
                    message=str(error.detail))

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> Response:
        return page(request, "index.html", recent=_with_states(
            jobs.list_jobs(settings.jobs_dir, limit=20, owner=request.state.user)))

    # Each kind of job: its form page, the form's POST (a redirect to the job) and the same POST as JSON
    for path, kind, make_job in (("elucidate", "elucidation", _elucidation_job), ("screen", "screening", _screening_job)):
        _job_routes(app, path, kind, make_job, page, _with_states)

    @app.get("/api/jobs/{job_id}", response_model=schemas.JobStatus, responses=schemas.ERRORS)
    def job_api(request: Request, job_id: str) -> schemas.JobStatus:
        """A job's record, state and progress (only the signed-in user's own jobs)."""
        folder = jobs.job_dir(settings.jobs_dir, job_id, owner=request.state.user)
        return schemas.JobStatus(job=jobs.read_json(folder / "job.json"),
                                 **asdict(jobs.job_state(folder, jobs.prefect_flow_run)))

    @app.post("/api/jobs/{job_id}/cancel", responses=schemas.ERRORS)
    async def cancel_api(request: Request, job_id: str) -> dict[str, str]:
        """Cancel one of your jobs: its flow run is cancelled."""
        folder = jobs.job_dir(settings.jobs_dir, job_id, owner=request.state.user)
        if not (request.state.bearer or settings.auth == "none"):
            check_csrf(request, await request.form(max_files=0, max_fields=2))
        from chemgen.web import runner

        return {"job": job_id, "outcome": await run_in_threadpool(runner.cancel, folder)}

    @app.post("/jobs/{job_id}/cancel")
    async def cancel_form(request: Request, job_id: str) -> Response:
        folder = jobs.job_dir(settings.jobs_dir, job_id, owner=request.state.user)
        check_csrf(request, await request.form(max_files=0, max_fields=2))
        from chemgen.web import runner

        await run_in_threadpool(runner.cancel, folder)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: str) -> Response:
        folder = jobs.job_dir(settings.jobs_dir, job_id, owner=request.state.user)
        record = jobs.read_json(folder / "job.json")
        state = jobs.job_state(folder, jobs.prefect_flow_run)
        results = None
        if state.state == "completed":
            results = (elucidation_results if record["kind"] == "elucidation" else screening_results)(folder)
        return page(request, f"job_{record['kind']}.html", job=record, state=state, results=results,
                    threedmol=settings.threedmol_js is not None)

    @app.get("/jobs/{job_id}/files/{relative:path}")
    def job_file(request: Request, job_id: str, relative: str) -> Response:
        folder = jobs.job_dir(settings.jobs_dir, job_id, owner=request.state.user)
        path = jobs.safe_file(folder / "out", relative.removeprefix("out/"))
        inline = path.suffix == ".png"
        return FileResponse(path, media_type=DOWNLOAD_TYPES.get(path.suffix, "application/octet-stream"),
                            filename=None if inline else f"{job_id[:8]}-{path.name}")

    @app.get("/models", response_class=HTMLResponse)
    def models_page(request: Request) -> Response:
        from chemgen import tracking

        return page(request, "models.html", models=registry.models(settings.mlflow_ui_url),
                    tracking_uri=tracking.tracking_uri())

    @app.get("/models/{name}", response_class=HTMLResponse)
    def model_page(request: Request, name: str) -> Response:
        return page(request, "model.html", model=registry.model(name, settings.mlflow_ui_url))

    @app.get("/vendor/3Dmol-min.js")
    def threedmol() -> Response:
        if settings.threedmol_js is None or not settings.threedmol_js.is_file():
            raise HTTPException(404, "3Dmol.js is not installed: `make install` (npm package 3dmol) or set "
                                     "CHEMGEN_3DMOL_JS to its 3Dmol-min.js")
        return FileResponse(settings.threedmol_js, media_type="text/javascript")

    return app


def _job_routes(app: FastAPI, path: str, kind: str, make_job: Any, page: Any, with_states: Any) -> None:
    settings: WebSettings = app.state.settings

    def form(request: Request) -> Response:
        return page(request, f"{path}.html", models=registry.job_models(kind),
                    recent=with_states(jobs.list_jobs(settings.jobs_dir, kind, 10, owner=request.state.user)))

    async def admitted(request: Request) -> None:
        """CSRF (forms always; the API unless a bearer token or a single-user server), then the user's rate."""
        if not request.url.path.startswith("/api/") or not (request.state.bearer or settings.auth == "none"):
            check_csrf(request, await request.form(max_files=settings.max_files, max_fields=10))
        if not app.state.limiter.allow(request.state.user):
            raise UploadProblem(f"more than {settings.jobs_per_minute} jobs a minute: wait a minute", 429)

    async def submit(request: Request) -> Response:
        await admitted(request)
        return RedirectResponse(f"/jobs/{await make_job(request)}", status_code=303)

    async def submit_json(request: Request) -> schemas.JobSubmitted:
        await admitted(request)
        job_id = await make_job(request)
        return schemas.JobSubmitted(job=job_id, url=f"/jobs/{job_id}")

    app.add_api_route(f"/{path}", form, methods=["GET"], response_class=HTMLResponse, name=f"{path}-form")
    app.add_api_route(f"/{path}", submit, methods=["POST"], name=f"{path}-submit")
    app.add_api_route(f"/api/{path}", submit_json, methods=["POST"], name=f"{path}-api", status_code=202,
                      response_model=schemas.JobSubmitted, responses=schemas.ERRORS,
                      openapi_extra=schemas.ELUCIDATE_FORM if kind == "elucidation" else schemas.SCREEN_FORM,
                      summary=f"Start a{'n' if kind == 'elucidation' else ''} {kind} job")
