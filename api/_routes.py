"""HTTP routes: jobs, synchronous solves, models (listed, uploaded, deleted), catalogs,
settings, health and metrics.

Handlers return plain data; FastAPI checks it against the route's `response_model` and
serializes it (non-finite floats as null), leaving out keys the data did not have.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import shutil
import tempfile
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from allocator import ProblemDocument
from allocator._registered import (
    BUILTIN_MODELS,
    ModelExistsError,
    RegisteredModel,
    delete_upload,
    register_upload,
    registered_models,
    uploads_dir,
)
from allocator._rules import rules_summary
from allocator.export import TARGETS
from api import _exports as exports
from api import _validate as check
from api._auth import require_read, require_write
from api._errors import ApiError, error_response
from api._model_uploads import receive_form
from api._schemas import (
    MAX_BUDGETS,
    MAX_PAGE_SIZE,
    MAX_SEED,
    MODEL_UPLOAD_FORM,
    BitConfigPublic,
    BudgetsPublic,
    BudgetsValidate,
    BudgetText,
    ErrorPublic,
    EstimatorsPublic,
    HealthPublic,
    HwProfilesPublic,
    JobCreate,
    JobPublic,
    JobsPublic,
    ModelPublic,
    ModelsPublic,
    ParetoPublic,
    ResolveCreate,
    ResolvedPublic,
    ResultPublic,
    ServiceSettingsPublic,
    SolveCreate,
    SolversPublic,
    Status,
)
from api._service import Service
from api._solving import solve_sync
from api._store import FINISHED, STAGES, STATUSES
from engine import (
    DEFAULT_BITS,
    MAX_BITS,
    MIN_BITS,
    InvalidSpecError,
    UnknownComponentError,
)

log = logging.getLogger("allocator.api")

JobId = Annotated[str, Path(pattern="^[0-9a-f]{32}$", description="32 hex digits",
                            examples=["0123456789abcdef0123456789abcdef"])]
_E = {"model": ErrorPublic}
# 400: a body that cannot be read as text at all (FastAPI's answer); 422: any other bad input.
ERRORS = {400: _E, 401: _E, 404: _E, 409: _E, 413: _E, 422: _E, 503: _E}
# Every JSON route: the body holds the keys the data has, no defaults filled in.
EXACT = {"response_model_exclude_unset": True}

read = APIRouter(dependencies=[Depends(require_read)], responses=ERRORS)
write = APIRouter(dependencies=[Depends(require_write)], responses=ERRORS)
open_routes = APIRouter()


def service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service)]


# -- jobs ----------------------------------------------------------------------------------


def _submit(svc: Service, body: JobCreate) -> dict[str, Any]:
    s = svc.settings
    if (body.model is None) == (body.problem is None):
        raise ApiError(422, "`body.model`: give exactly one of `model` (a registered model) and "
                            "`problem` (an allocator.problem/1 document).", "body.model",
                       body.model)
    budgets = check.budgets(body.budgets)
    solver = check.solver(body.solver, has_model=body.model is not None)
    bits = check.bits(body.bits)
    spec: dict[str, Any] = {"budgets": [b.text for b in budgets], "solver": solver,
                            "seed": body.seed, "measure": body.measure}
    spec |= {key: value for key, value in (("ties", body.ties), ("fix", body.fix)) if value}
    target = check.target(body.target, has_model=body.model is not None)
    if target != "engine":  # an engine job's stored spec stays as it always was
        spec["target"] = target
    if body.model is not None:
        registered = ({} if body.model.startswith("hf:") or body.model in BUILTIN_MODELS
                      else _registered(svc))
        check.model(body.model, svc.catalog, registered=registered)
        estimator = body.estimator
        entry = registered.get(body.model)
        if estimator is None and entry is not None:
            estimator = entry.estimator  # the registration's default, unless the job names one
        # None: the model's own default (hutchinson; fisher for causal LMs), chosen by the worker
        spec |= {"estimator": None if estimator is None else check.estimator(estimator,
                                                                              svc.catalog),
                 "bits": bits or list(DEFAULT_BITS)}
        check.rules(body.ties, body.fix, candidate_bits=spec["bits"])
        job = svc.store.create(kind="model", model=body.model, spec=spec)
    else:
        prob = check.problem(body.problem, max_layers=s.sync_max_layers * 10,
                             candidate_bits=bits, budget_list=budgets)
        check.rules(body.ties, body.fix, candidate_bits=list(prob.bits), problem=prob)
        spec |= {"estimator": None, "bits": list(prob.bits), "measure": False}
        document = body.problem.model_dump(mode="json", exclude_unset=True)
        job = svc.store.create(kind="problem", model=None, spec=spec, problem=document)
    svc.submit(job.id)
    return job.public()


@write.post("/jobs", status_code=202, response_model=JobPublic, **EXACT)
def create_job(svc: ServiceDep, body: JobCreate) -> Any:
    """Submit a job for a registered model or an allocator.problem/1 document."""
    return _submit(svc, body)


@write.post("/jobs/upload", status_code=202, response_model=JobPublic, **EXACT)
def create_job_upload(
    svc: ServiceDep,
    file: Annotated[UploadFile, File(description="allocator.problem/1 JSON file")],
    budgets: Annotated[list[BudgetText], Form(min_length=1, max_length=MAX_BUDGETS)],
    solver: Annotated[str, Form(min_length=1, max_length=32)] = "ilp",
    seed: Annotated[int, Form(ge=0, le=MAX_SEED)] = 0,
) -> Any:
    """Submit a job for an uploaded allocator.problem/1 file (multipart form)."""
    raw = file.file.read(svc.settings.max_upload_bytes + 1)
    if len(raw) > svc.settings.max_upload_bytes:
        raise ApiError(413, f"`file` is larger than {svc.settings.max_upload_bytes} bytes.",
                       "body.file", len(raw))
    try:  # UTF-8 (with or without a BOM), or UTF-16/32 as `json.loads` reads bytes
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError as e:
        raise ApiError(422, f"`file` is not UTF-8 text: {e.reason} at byte {e.start}.",
                       "body.file", file.filename) from None
    try:  # the file reader's checks: depth, Unicode, finite numbers, then the format
        document = ProblemDocument.from_json_text(text.removeprefix("\ufeff"),
                                                  what="problem file")
    except InvalidSpecError as e:
        raise ApiError(422, f"`file`: {e}", "body.file", file.filename) from None
    try:
        body = JobCreate(problem=document, budgets=budgets, solver=solver, seed=seed,
                         measure=False)
    except ValidationError as e:  # a form field the walk refuses (a lone surrogate)
        error = e.errors(include_url=False)[0]
        field = ".".join(["body", *map(str, error["loc"]),
                          *map(str, (error.get("ctx") or {}).get("loc", ()))])
        raise ApiError(422, f"`{field}`: {error['msg']}.", field, None) from None
    return _submit(svc, body)


@read.get("/jobs", response_model=JobsPublic, **EXACT)
def read_jobs(
    svc: ServiceDep,
    status: Status | None = None,
    model: Annotated[str | None, Query(max_length=128, pattern=r"^[A-Za-z0-9._:/\-]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Any:
    """List jobs, newest first, filtered by status and model."""
    jobs, total = svc.store.list(status=status, model=model, limit=limit, offset=offset)
    return {"items": [j.public() for j in jobs], "total": total, "limit": limit,
            "offset": offset}


@read.get("/jobs/{job_id}", response_model=JobPublic, **EXACT)
def read_job(svc: ServiceDep, job_id: JobId) -> Any:
    """A job's status, stage, progress, timings and error."""
    return svc.store.get(job_id).public()


@read.get("/jobs/{job_id}/result", response_model=ResultPublic, **EXACT)
def read_job_result(svc: ServiceDep, job_id: JobId) -> Any:
    """The BitConfig, measurements, best uniform and problem of a succeeded job."""
    return svc.store.result(job_id)


@read.get("/jobs/{job_id}/pareto", response_model=ParetoPublic, **EXACT)
def read_job_pareto(svc: ServiceDep, job_id: JobId) -> Any:
    """The Pareto front of a succeeded job (allocator.pareto/1 plus measurements)."""
    return svc.store.front(job_id)


ExportFormat = Annotated[str, Query(
    alias="format", max_length=32, description="onnx, compressed-tensors or gguf",
    examples=["gguf"])]


@read.get("/jobs/{job_id}/export", response_class=Response, responses={
    200: {"content": {"application/octet-stream": {}, "application/zip": {}},
          "description": "The exported file (compressed-tensors: its folder zipped)"},
    202: {"description": "`{\"status\": \"exporting\"}`: ask again after `Retry-After` "
                         "seconds"},
    500: _E})
def read_job_export(svc: ServiceDep, job_id: JobId, fmt: ExportFormat) -> Any:
    """A succeeded model job's config exported as ONNX, compressed-tensors or GGUF, checked
    by the format's library: the first request starts the export (202 while it runs)."""
    fmt = check.export_format(fmt)
    job = svc.store.get(job_id)
    if job.kind != "model":
        raise ApiError(422, f"`path.job_id`: job {job_id!r} solved a problem document; it has "
                            "no model to export.", "path.job_id", job_id)
    if job.status != "succeeded":
        return error_response(409, f"job {job_id!r} is {job.status}; it can be exported once "
                                   "it has succeeded.", "path.job_id", job_id,
                              status=job.status)
    folder = exports.export_dir(svc.settings.resolved_data_dir(), job_id, fmt)
    st = exports.state(folder, fmt)
    if st is None:
        config = svc.store.result(job_id)["config"]
        st = exports.start(folder, fmt, str(job.model), config, svc.settings.worker_env())
    if st.status == "done" and st.path is not None:
        return FileResponse(st.path, media_type=exports.MEDIA_TYPES[fmt],
                            filename=exports.download_name(job_id, fmt))
    if st.status == "failed":
        return error_response(st.http_status, f"export to {fmt} failed: {st.error}",
                              "query.format", fmt, status="failed")
    return JSONResponse({"status": "exporting"}, status_code=202,
                        headers={"Retry-After": str(exports.RETRY_AFTER_S)})


@write.post("/jobs/{job_id}/cancel", response_model=JobPublic, **EXACT)
def cancel_job(svc: ServiceDep, job_id: JobId) -> Any:
    """Cancel a queued or running job (409 when it already finished)."""
    return svc.store.cancel(job_id).public()


def _solve(svc: Service, prob, budget_list, solver: str, seed: int) -> dict[str, Any]:
    """The BitConfig of a synchronous solve, run in a solver process under the service's
    limits (`api._solving`: 422 past `sync_time_limit_s`, 503 when every process is busy)."""
    return solve_sync(svc.settings, prob, budget_list, solver=solver, seed=seed)


@write.post("/jobs/{job_id}/solve", response_model=ResolvedPublic, **EXACT)
def resolve_job(svc: ServiceDep, job_id: JobId, body: ResolveCreate) -> Any:
    """Re-solve a job's cached problem with other budgets or another solver (a direct
    answer: the BitConfig, predicted only; no recomputation of sensitivities)."""
    job = svc.store.get(job_id)
    data = svc.store.problem(job_id)
    if data is None:
        raise ApiError(409, f"job {job_id!r} has no cached problem yet ({job.status}); "
                            "re-solve once it has succeeded.", "path.job_id", job_id)
    budget_list = check.budgets(body.budgets)
    solver = check.solver(body.solver, in_api=True)
    # A re-solve is synchronous: the same layer limit as POST /solve (`sync_max_layers`).
    prob = check.problem(data, max_layers=svc.settings.sync_max_layers, field="job.problem",
                         candidate_bits=check.bits(body.bits) or job.spec.get("bits"),
                         budget_list=budget_list)
    # the job's ties and pins hold in its re-solves too (a model job's problem has them)
    prob = check.rules(job.spec.get("ties"), job.spec.get("fix"), candidate_bits=list(prob.bits),
                       problem=prob, field="job") or prob
    config = _solve(svc, prob, budget_list, solver, body.seed)
    held = rules_summary(prob, [config["bits"]])
    if held is not None:
        config["extra"] = dict(config.get("extra") or {}) | {"rules": held}
    return config | {"job_id": job_id}


@write.post("/solve", response_model=BitConfigPublic, **EXACT)
def solve_problem(svc: ServiceDep, body: SolveCreate) -> Any:
    """Solve an allocator.problem/1 document now (small problems; time-limited)."""
    budget_list = check.budgets(body.budgets)
    solver = check.solver(body.solver, in_api=True)
    prob = check.problem(body.problem, max_layers=svc.settings.sync_max_layers,
                         candidate_bits=check.bits(body.bits), budget_list=budget_list)
    return _solve(svc, prob, budget_list, solver, body.seed)


@read.post("/budgets/validate", response_model=BudgetsPublic, **EXACT)
def validate_budgets(body: BudgetsValidate) -> Any:
    """Check budget texts against the budget grammar (the CLI's). A read: it changes
    nothing, so a read-only dashboard can check its form."""
    parsed = check.budgets(body.budgets)
    return {"budgets": [{"text": b.text, "kind": b.kind, "value": b.value} for b in parsed]}


# -- catalogs, settings, health, metrics ---------------------------------------------------


@read.get("/models", response_model=ModelsPublic, **EXACT)
def read_models(svc: ServiceDep) -> Any:
    """Built-in models and whether they are installed, then the registered ones (models
    file and uploads, read now) with their origin, source and size."""
    registered = _registered(svc)
    builtins = [m for m in svc.catalog.get()["models"]
                if m["name"] not in registered and m.get("origin") is None]
    return {"models": builtins + [_model_row(m) for m in registered.values()]}


def _registered(svc: Service) -> dict[str, RegisteredModel]:
    """The registered models, read fresh (uploads come and go); 503 when the models file
    has turned unreadable since the service started."""
    try:
        return registered_models(data_dir=svc.settings.resolved_data_dir(),
                                 models_file=svc.settings.models_file)
    except InvalidSpecError as e:
        raise ApiError(503, f"the registered models cannot be read: {e}") from None


def _model_row(model: RegisteredModel) -> dict[str, Any]:
    """A registered model as `ModelPublic` (keys without a value left out)."""
    import importlib.util

    row: dict[str, Any] = {"name": model.name, "description": model.description,
                           "available": importlib.util.find_spec("transformers") is not None}
    if not row["available"]:
        row["missing"] = "install the `models` extra (transformers)"
    return row | {k: v for k, v in model.to_dict().items()
                  if v is not None and k not in ("name", "description")}


def _upload_field(message: str, archive_field: str) -> str:
    """The form field an upload's refusal is about (the library names it first)."""
    for prefix, name in (("data file", "data"), ("`name`", "name"),
                         ("`description`", "description")):
        if message.startswith(prefix):
            return f"body.{name}"
    return f"body.{archive_field}"


@write.post("/models", status_code=201, response_model=ModelPublic,
            openapi_extra=MODEL_UPLOAD_FORM, **EXACT)
async def create_model(request: Request, svc: ServiceDep) -> Any:
    """Upload a Hugging Face checkpoint archive and register it (multipart: `archive` or
    `file`, optional `data`, `name`, `description`); the same archive again answers its
    existing registration."""
    s = svc.settings
    data_dir = s.resolved_data_dir()
    # Streamed into the uploads folder itself: the unpacked copy lands on the same disk.
    incoming = pathlib.Path(tempfile.mkdtemp(prefix=".incoming-", dir=uploads_dir(data_dir)))
    try:
        form = await receive_form(
            request, incoming, text_fields=("name", "description"),
            file_limits={"archive": (s.max_model_bytes, "max_model_bytes"),
                         "file": (s.max_model_bytes, "max_model_bytes"),
                         "data": (s.max_upload_bytes, "max_upload_bytes")})
        given = [f for f in ("archive", "file") if f in form.files]
        if len(given) != 1:
            raise ApiError(422, "`body.archive`: give the checkpoint archive once, as "
                                "`archive` (or `file`).", "body.archive", None)
        archive, data = form.files[given[0]], form.files.get("data")
        name = form.fields.get("name") or None
        try:
            model = await run_in_threadpool(functools.partial(
                register_upload, archive.path, data=None if data is None else data.path,
                data_filename=None if data is None else data.filename, data_dir=data_dir,
                max_bytes=s.max_model_bytes, name=name,
                description=form.fields.get("description", ""), models_file=s.models_file))
        except ModelExistsError as e:
            raise ApiError(409, str(e), "body.name", name) from None
        except InvalidSpecError as e:
            field = _upload_field(str(e), given[0])
            values = {"body.data": data.filename if data else None, "body.name": name,
                      "body.description": None}
            raise ApiError(422, str(e), field, values.get(field, archive.filename)) from None
    finally:
        await run_in_threadpool(shutil.rmtree, incoming, True)
    return _model_row(model)


@write.delete("/models/{name}", status_code=204, response_class=Response,
              responses={204: {"description": "The upload is removed"}})
def delete_model(svc: ServiceDep,
                 name: Annotated[str, Path(min_length=1, max_length=128)]) -> Response:
    """Remove an uploaded model (404 when no model has the name; 409 for a built-in or a
    models-file entry)."""
    if name in BUILTIN_MODELS:
        raise ApiError(409, f"`path.name`: {name!r} is a built-in model; only uploaded models "
                            "can be deleted.", "path.name", name)
    model = _registered(svc).get(name)
    if model is None:
        raise ApiError(404, f"`path.name`: no registered model {name!r}.", "path.name", name)
    if model.origin != "upload":
        raise ApiError(409, f"`path.name`: {name!r} is registered by the models file "
                            f"`{svc.settings.models_file}`; remove it there.", "path.name",
                       name)
    try:
        delete_upload(name, svc.settings.resolved_data_dir())
    except UnknownComponentError:  # deleted meanwhile
        raise ApiError(404, f"`path.name`: no registered model {name!r}.", "path.name",
                       name) from None
    return Response(status_code=204)


@read.get("/solvers", response_model=SolversPublic, **EXACT)
def read_solvers() -> Any:
    """Registered solvers and whether they are installed."""
    from api._catalog import solvers

    return {"solvers": solvers()}


@read.get("/estimators", response_model=EstimatorsPublic, **EXACT)
def read_estimators(svc: ServiceDep) -> Any:
    """Registered sensitivity estimators."""
    return {"estimators": svc.catalog.get()["estimators"]}


@read.get("/hwprofiles", response_model=HwProfilesPublic, **EXACT)
def read_hwprofiles(svc: ServiceDep) -> Any:
    """Stored hardware latency profiles."""
    return {"hwprofiles": svc.catalog.get()["hwprofiles"]}


@open_routes.get("/settings", response_model=ServiceSettingsPublic, **EXACT)
def read_settings(svc: ServiceDep) -> Any:
    """What this service offers and expects: default and allowed bit-widths, job statuses
    and stages, request defaults and limits, and whether requests need the API token.
    Open like /health, so a client learns whether it needs a token before it has one."""
    s = svc.settings
    fields = JobCreate.model_fields
    return {
        "default_bits": list(DEFAULT_BITS), "min_bits": MIN_BITS, "max_bits": MAX_BITS,
        "statuses": list(STATUSES),
        "active_statuses": [x for x in STATUSES if x not in FINISHED],
        "stages": list(STAGES),
        "job_defaults": {name: fields[name].default
                         for name in ("solver", "estimator", "seed", "measure")},
        "limits": {"max_budgets": MAX_BUDGETS, "max_upload_bytes": s.max_upload_bytes,
                   "sync_max_layers": s.sync_max_layers,
                   "sync_time_limit_s": s.sync_time_limit_s,
                   "job_time_limit_s": s.job_time_limit_s, "max_page_size": MAX_PAGE_SIZE,
                   "max_model_bytes": s.max_model_bytes},
        "targets": [{"name": t.name, "description": t.description} for t in TARGETS],
        "write_requires_token": bool(s.api_token),
        "read_requires_token": bool(s.api_token) and s.read_requires_token,
        "workers": svc.mode,
    }


@open_routes.get("/health", response_model=HealthPublic,
                 responses={503: {"model": HealthPublic,
                                  "description": "The database cannot be read or written"}},
                 **EXACT)
def read_health(svc: ServiceDep) -> Any:
    """Each dependency: the database (read and write), the broker (Celery mode) and the
    workers with their last heartbeat; 503 when the service cannot take jobs."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse

    from api._health import health

    code, body = health(svc)
    if code != 200:
        return JSONResponse(jsonable_encoder(HealthPublic.model_validate(body),
                                             exclude_unset=True), status_code=code)
    return body


@read.get("/metrics", response_class=Response,
          responses={200: {"content": {"text/plain": {}},
                           "description": "Prometheus text exposition"}})
def read_metrics(request: Request) -> Any:
    """Prometheus metrics: jobs by status, request latency."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)


__all__ = ["open_routes", "read", "write"]
