"""`allocator profile` and `allocator profiles`: measure and list per-layer latency tables.

`profile` takes the model, its files and the candidate bits from the project file when the
flags are not given (flags win).
"""

from __future__ import annotations

import allocator
from allocator._project import load_project
from allocator.cli import _render as render
from allocator.cli._app import app
from allocator.cli._config import require_model
from allocator.cli._files import check_output, writing
from allocator.cli._models import model_spec
from allocator.cli._options import (
    AsJson,
    Batch,
    BitList,
    DataFile,
    Device,
    ModelName,
    ProfileOut,
    Repeats,
    WeightsFile,
    parse_bits,
)


@app.command("profile")
def profile_command(model: ModelName = None, batch: Batch = None, bits: BitList = None,
                    out: ProfileOut = None, repeats: Repeats = 20, device: Device = "auto",
                    data: DataFile = None, weights: WeightsFile = None,
                    as_json: AsJson = False) -> None:
    """Measure per-layer latency at each bit-width on this machine; store the table."""
    project = load_project()
    candidates = parse_bits(bits) if bits is not None else tuple(project.value("bits"))
    check_output("--out", out)
    spec = model_spec(*require_model(project, model, data, weights), device=device)
    run = allocator.profile_model(spec, candidates, batch=batch, repeats=repeats, progress=True)
    if out is not None:
        with writing("--out", out):
            run.table.save(out)
    render.emit(render.profile_document(run, out), as_json, render.profile_view)


@app.command("profiles")
def profiles_command(as_json: AsJson = False) -> None:
    """List the stored latency tables."""
    from hwprofiles import list_profiles, profiles_dir

    doc = {"directory": str(profiles_dir()), "profiles": [p.to_dict() for p in list_profiles()]}
    render.emit(doc, as_json, render.profiles_view)
