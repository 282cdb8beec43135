"""`allocator profile` and `allocator profiles`: measure and list per-layer latency tables.

Registered by `allocator.cli` (`app.command("profile")(profile_command)`); errors are
`engine` errors, which the CLI maps to exit codes (bad input: 2).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from engine._errors import InvalidSpecError


def parse_bits(text: str) -> tuple[int, ...]:
    """`"2,3,4,8"` -> (2, 3, 4, 8); raises `InvalidSpecError` naming `--bits`."""
    from engine._types import check_bits

    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InvalidSpecError(
            f"`--bits` must be a comma-separated list such as 2,4,8; got {text!r}.") from None
    if not values:
        raise InvalidSpecError(f"`--bits` must name at least one bit-width; got {text!r}.")
    return tuple(dict.fromkeys(check_bits(v, where="--bits") for v in values))


def batch_inputs(spec: Any, batch: int | None) -> Any:
    """The spec's example batch, rebuilt at `batch` rows where the spec allows.

    MiniLM: the first `batch` evaluation sentences, tokenized (cycled when fewer exist);
    tensor inputs: evaluation inputs sliced or repeated to `batch` rows.
    """
    import torch

    if batch is None:
        return spec.example_inputs()
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidSpecError(f"`--batch` must be an integer >= 1, got {batch!r}.")
    if hasattr(spec, "encode") and hasattr(spec, "texts"):
        texts = list(spec.texts()["eval"])
        return spec.encode([texts[i % len(texts)] for i in range(batch)])
    batches = [b.inputs for b in spec.evaluation_batches()]
    first = batches[0]
    if isinstance(first, torch.Tensor):
        pool = torch.cat([b for b in batches if isinstance(b, torch.Tensor)])
        return pool[torch.arange(batch) % pool.shape[0]]
    if isinstance(first, dict) and all(isinstance(v, torch.Tensor) for v in first.values()):
        rows = next(iter(first.values())).shape[0]
        idx = torch.arange(batch) % rows
        return {k: v[idx] for k, v in first.items()}
    raise InvalidSpecError(f"`--batch` is not supported for model {spec.name!r} "
                           "(its inputs cannot be resized); leave it out.")


def _summary(table: Any, name: str, path: str, out: str | None, seconds: float) -> dict:
    entries = []
    for sig, e in table.entries.items():
        entries.append({"signature": sig, "kind": e.kind, "macs": e.macs,
                        "layers": len(e.layers),
                        "times": {k: {"kernel": m.kernel, "p50_us": m.p50_us,
                                      "p90_us": m.p90_us} for k, m in e.times.items()}})
    return {"name": name, "path": path, "out": out, "model": table.model, "batch": table.batch,
            "device": table.device.to_dict(), "overhead_us": table.overhead_us,
            "profile_seconds": seconds, "entries": entries}


def profile_command(
    model: Annotated[str, typer.Option("--model", help="Registered model, e.g. minilm.")],
    batch: Annotated[int | None, typer.Option("--batch", help="Batch size to measure at "
                                              "(default: the model's evaluation batch).")] = None,
    bits: Annotated[str, typer.Option("--bits", help="Candidate bit-widths.")] = "2,3,4,5,6,8",
    out: Annotated[str | None, typer.Option("--out", help="Also write the table here.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed calls per measurement.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Measure per-layer latency at each bit-width on this machine; store the table."""
    import zoo
    from engine import discover_layers
    from hwprofiles import (
        DeviceFingerprint,
        batch_size,
        profile_layers,
        profile_name,
        profiles_dir,
        save_profile,
    )

    bit_list = parse_bits(bits)
    if isinstance(repeats, bool) or repeats < 1:
        raise InvalidSpecError(f"`--repeats` must be an integer >= 1, got {repeats!r}.")
    spec = zoo.get_model(model)
    inputs = batch_inputs(spec, batch)
    fp32 = spec.build()
    layers = discover_layers(fp32, inputs, skip=getattr(spec, "skip_layers", ()))
    name = profile_name(spec.name, batch_size(inputs), DeviceFingerprint.current())
    partial = profiles_dir() / f".{name}.partial"  # resumes an interrupted run
    start = time.perf_counter()
    table = profile_layers(fp32, layers, inputs, bit_list, repeats=repeats, progress=True,
                           resume_path=partial, model_name=spec.name)
    seconds = time.perf_counter() - start
    path = save_profile(table, name)
    if out is not None:
        table.save(out)
    partial.unlink(missing_ok=True)
    summary = _summary(table, name, str(path), out, seconds)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        return
    _print_table(table, summary)


def _print_table(table: Any, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = sorted({k for e in table.entries.values() for k in e.times},
                  key=lambda k: (0, 0) if k == "fp32" else (1, int(k)))
    view = Table(title=f"{summary['model']} at batch {table.batch} on "
                       f"{table.device.cpu_model} ({table.device.torch_threads} threads): "
                       "p50 per call")
    view.add_column("shape", overflow="fold")
    view.add_column("layers", justify="right")
    for k in keys:
        view.add_column(k if k == "fp32" else f"int{k}", justify="right")
    for sig, e in table.entries.items():
        cells = []
        for k in keys:
            m = e.times.get(k)
            cells.append("-" if m is None else f"{m.p50_us:,.0f} us\n[dim]{m.kernel}[/dim]")
        view.add_row(sig, str(len(e.layers)), *cells)
    console = Console()
    console.print(view)
    overhead = "" if table.overhead_us is None else \
        f"; non-layer time {table.overhead_us / 1e3:.2f} ms"
    console.print(f"saved [bold]{summary['name']}[/bold] ({summary['path']})"
                  + (f" and {summary['out']}" if summary["out"] else "")
                  + f" in {summary['profile_seconds']:.1f} s{overhead}")


def profiles_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """List the stored latency tables."""
    from hwprofiles import list_profiles, profiles_dir

    infos = list_profiles()
    if as_json:
        data = {"directory": str(profiles_dir()), "profiles": [p.to_dict() for p in infos]}
        sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    view = Table(title=f"latency profiles in {profiles_dir()}")
    view.add_column("name", no_wrap=True)
    view.add_column("model", no_wrap=True)
    for col in ("batch", "entries"):
        view.add_column(col, justify="right")
    view.add_column("device")
    view.add_column("created", no_wrap=True)
    for p in infos:
        if p.error:
            view.add_row(p.name, "-", "-", "-", f"[red]invalid: {p.error}[/red]", "-")
        else:
            view.add_row(p.name, p.model or "-", str(p.batch), str(p.entries), p.device,
                         p.created[:10])
    Console().print(view)
