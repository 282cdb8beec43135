"""Everything the commands print: rich tables on stdout, one JSON document with `--json`,
progress and logs on stderr, and the infeasible exit.

A command builds its JSON document and passes it to `emit` with a view; the view renders
that same document as tables, so the two outputs cannot drift apart.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console, RenderableType
from rich.table import Table

from allocator.cli._app import ExitCode
from engine import atomic_write_bytes

if TYPE_CHECKING:
    from allocator import ParetoFront, ProfileRun
    from allocator.cli._demo import DemoRow
    from engine import BitConfig

Document = Mapping[str, Any]
View = Callable[[Document], Sequence[RenderableType]]
MIB = 2**20


def _json_text(data: object) -> str:
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def print_json(data: object) -> None:
    """Writes `data` to stdout as one JSON document."""
    sys.stdout.write(_json_text(data))


def write_json(path: str, data: object) -> None:
    """Writes `data` as JSON to `path` (atomically: a reader never sees half a file)."""
    atomic_write_bytes(Path(path), _json_text(data).encode())


def show(*renderables: RenderableType) -> None:
    """Prints rich renderables on stdout."""
    console = Console()
    for item in renderables:
        console.print(item)


def emit(document: Document, as_json: bool, view: View) -> None:
    """Prints `document` as JSON with `--json`, else the tables `view` makes of it."""
    if as_json:
        print_json(document)
    else:
        show(*view(document))


@contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with `message` on stderr while the block runs."""
    with Console(stderr=True).status(message):
        yield


def log(message: str) -> None:
    """One timestamped log line on stderr."""
    Console(stderr=True, log_path=False).log(message)


def timings_table(timings_s: Mapping[str, float]) -> Table:
    """Seconds per stage (`load_s`, `sensitivity_s`, ...) with each one's share and the
    total: where a solve's time went."""
    total = sum(timings_s.values())
    table = _table("timings", ["stage", "seconds", "share"], right=["seconds", "share"])
    for key, seconds in timings_s.items():
        table.add_row(key.removesuffix("_s"), f"{seconds:.2f}",
                      f"{100 * seconds / total:.0f} %" if total > 0 else "-")
    table.add_row("total", f"{total:.2f}", "100 %" if total > 0 else "-")
    return table


def show_timings(timings_s: Mapping[str, float]) -> None:
    """Prints `timings_table` on stderr (stdout stays the result, JSON or tables)."""
    Console(stderr=True).print(timings_table(timings_s))


def exit_if_infeasible(config: BitConfig) -> None:
    """Exits with `ExitCode.INFEASIBLE`, saying on stderr the least value of each budget
    that can be met, when `config` is infeasible."""
    if config.status != "infeasible":
        return
    need = ", ".join(f"{k} -> at least {v}"
                     for k, v in config.extra.get("infeasible_budgets", {}).items())
    typer.echo(f"infeasible: the budgets cannot all be met ({need}).", err=True)
    raise typer.Exit(ExitCode.INFEASIBLE)


def _table(title: str | None, columns: Sequence[str], right: Sequence[str] = ()) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left")
    return table


def _mib(size_bytes: float) -> str:
    return f"{size_bytes / MIB:.2f} MiB"


def _ms(latency_us: float) -> str:
    return f"{latency_us / 1e3:.1f} ms"


def models_view(doc: Document) -> list[RenderableType]:
    """`allocator models`: one row per registered model."""
    table = _table("models", ("name", "params", "layers", "metric", "description"),
                   right=("params", "layers"))
    for r in doc["models"]:
        table.add_row(r["name"], f"{r.get('params', 0):,}" if r["available"] else "-",
                      str(r.get("quantizable_layers", "-")), r.get("metric", r.get("missing", "")),
                      r["description"])
    return [table]


def solvers_view(doc: Document) -> list[RenderableType]:
    """`allocator solvers`: each solver and whether it is installed."""
    backends = ", ".join(doc["ilp_backends"]) or "none"
    table = _table(f"solvers (ILP backends: {backends})", ("name", "available", "description"))
    for r in doc["solvers"]:
        avail = "yes" if r["available"] else f"no (install `{r['extra']}`)"
        table.add_row(r["name"], avail, r["description"])
    return [table]


def evaluation_view(doc: Document) -> list[RenderableType]:
    """`allocator evaluate`: quantized next to FP32 (an `Evaluation.to_dict()`)."""
    table = _table(f"{doc['model']}: {doc['avg_bits']:.2f} average weight bits, measured here",
                   ("", "FP32", "quantized"), right=("FP32", "quantized"))
    for key, value in doc["metrics"].items():
        table.add_row(key, f"{doc['fp32_metrics'][key]:.5g}", f"{value:.5g}")
    table.add_row("size", _mib(doc["fp32_size_bytes"]), _mib(doc["size_bytes"]))
    table.add_row("latency (1 batch)", _ms(doc["fp32_latency_us"]),
                  f"{_ms(doc['latency_us'])} ({doc['speedup_vs_fp32']:.2f}x)")
    table.add_row("kernels", "float", ", ".join(sorted(doc["kernels"])))
    return [table]


def sensitivity_view(doc: Document) -> list[RenderableType]:
    """`allocator sensitivity`: Ω per layer and bit-width (an `allocator.sensitivity/1`)."""
    fracbits = doc["estimator"] == "fracbits"
    facts = ("learned bits",) if fracbits else ("trace", "rel. std-err", "probes")
    omegas = [f"Ω@{b}" for b in doc["bits"]]
    table = _table(f"{doc['estimator']} sensitivity of {doc['model']} ({doc['elapsed_s']:.1f} s)",
                   ("layer", *facts, *omegas), right=(*facts, *omegas))
    for name, row in doc["layers"].items():
        trace, std_error = row["trace"], row["std_error"]
        if fracbits:
            cells = [f"{row['extra']['fractional_bits']:.2f}"]
        else:
            rel = f"{std_error / abs(trace):.1%}" if std_error is not None and trace else "-"
            cells = ["-" if trace is None else f"{trace:.4g}", rel, str(row["probes"])]
        omega = [row["omega"][str(b)] for b in doc["bits"]]
        flags = " [" + ",".join(row["flags"]) + "]" if row["flags"] else ""
        table.add_row(name + flags, *cells, *("-" if v is None else f"{v:.3g}" for v in omega))
    return [table]


def _solution(config: Document) -> list[RenderableType]:
    cost = config["cost"]
    summary = (f"[bold]{config['status']}[/bold] ({config['solver']}) "
               f"objective {config['objective']:.6g}; avg {cost.get('avg_bits', 0):.3f} bits, "
               f"{cost.get('size_bytes', 0) / 1e6:.3f} MB, {cost.get('bops', 0) / 1e9:.4g} GBOPs"
               + (f", {cost['latency_us'] / 1e3:.3f} ms" if "latency_us" in cost else ""))
    if len(config["bits"]) > 80:
        return [summary]
    table = Table(show_header=True)
    table.add_column("layer")
    table.add_column("bits", justify="right")
    for name, bits in config["bits"].items():
        table.add_row(name, str(bits))
    return [summary, table]


def _predicted(cost: Mapping[str, float]) -> str:
    return _mib(cost["size_bytes"]) + (
        f", {_ms(cost['latency_us'])}" if "latency_us" in cost else "")


def _measured_table(doc: Document) -> Table:
    config, m, u = doc["config"], doc["measured"], doc["uniform"]
    columns = ["", "FP32", f"mixed ({config['cost']['avg_bits']:.2f} bits)"]
    columns += [f"uniform {u['bits']} bits"] if u else []
    runtime = m.get("latency_runtime", "engine")
    title = ("measured on the engine" if runtime == "engine"
             else f"measured on the engine, latency in {runtime}")
    table = _table(title, columns, right=columns[1:])
    for k in m["metrics"]:
        table.add_row(k, f"{m['fp32_metrics'][k]:.5g}", f"{m['metrics'][k]:.5g}",
                      *([f"{u['metrics'][k]:.5g}"] if u else []))
    table.add_row("size", _mib(m["fp32_size_bytes"]), _mib(m["size_bytes"]),
                  *([_mib(u["size_bytes"])] if u else []))
    if "latency_us" in m:
        uniform_us = (m.get("uniform") or {}).get("latency_us") if u else None
        table.add_row("latency (1 batch)", _ms(m["fp32_latency_us"]),
                      f"{_ms(m['latency_us'])} ({m['speedup_vs_fp32']:.2f}x)",
                      *([] if uniform_us is None else [_ms(uniform_us)]))
    table.add_row("predicted by the solve", "", _predicted(config["cost"]),
                  *([_predicted(u["cost"])] if u else []))
    return table


def solve_view(doc: Document) -> list[RenderableType]:
    """`allocator solve`: the chosen bits, and with a measured model the engine's numbers
    next to FP32 and the best uniform configuration (a `SolveReport.to_dict()`)."""
    out = _solution(doc["config"])
    if doc["measured"]:
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in doc["timings_s"].items())
        out += [_measured_table(doc), f"timings: {timings}"]
    return out


def front_document(front: ParetoFront, measured: Sequence[Mapping[str, float]]) -> dict:
    """The `allocator.pareto/1` document of `front`, each measured point with `measured`."""
    data = front.to_dict()
    for point, metrics in zip(data["points"], measured, strict=False):
        point["measured"] = metrics
    return data


def front_view(doc: Document) -> list[RenderableType]:
    """`allocator pareto`: one row per point of the front."""
    key, points = doc["cost_key"], doc["points"]
    measured = any("measured" in p for p in points)
    columns = [key, "objective", "bits used", *(["measured"] if measured else [])]
    table = _table(f"Pareto front along {doc['axis']} ({len(points)} points)", columns,
                   right=(key, "objective", "measured"))
    for p in points:
        used = ",".join(map(str, sorted(set(p["bits"].values()))))
        row = [f"{p['cost'][key]:.6g}", f"{p['objective']:.6g}", used]
        if measured:
            shown = list(p.get("measured", {}).items())[:2]
            row.append(", ".join(f"{k}={v:.5g}" for k, v in shown) if shown else "-")
        table.add_row(*row)
    return [table]


def profile_document(run: ProfileRun, out: str | None) -> dict[str, Any]:
    """What `allocator profile --json` prints: the stored table's name, place and timings."""
    table = run.table
    entries = [{"signature": sig, "kind": e.kind, "macs": e.macs, "layers": len(e.layers),
                "times": {k: {"kernel": m.kernel, "p50_us": m.p50_us, "p90_us": m.p90_us}
                          for k, m in e.times.items()}}
               for sig, e in table.entries.items()]
    return {"name": run.name, "path": str(run.path), "out": out, "model": table.model,
            "batch": table.batch, "device": table.device.to_dict(),
            "overhead_us": table.overhead_us, "profile_s": run.profile_s,
            "entries": entries}


def profile_view(doc: Document) -> list[RenderableType]:
    """`allocator profile`: p50 per layer shape and bit-width, then where it was saved."""
    keys = sorted({k for e in doc["entries"] for k in e["times"]},
                  key=lambda k: (0, 0) if k == "fp32" else (1, int(k)))
    device = doc["device"]
    table = Table(title=f"{doc['model']} at batch {doc['batch']} on {device['cpu_model']} "
                        f"({device['torch_threads']} threads): p50 per call")
    table.add_column("shape", overflow="fold")
    table.add_column("layers", justify="right")
    for k in keys:
        table.add_column(k if k == "fp32" else f"int{k}", justify="right")
    for e in doc["entries"]:
        cells = [f"{m['p50_us']:,.0f} us\n[dim]{m['kernel']}[/dim]" if m else "-"
                 for m in (e["times"].get(k) for k in keys)]
        table.add_row(e["signature"], str(e["layers"]), *cells)
    overhead = ("" if doc["overhead_us"] is None
                else f"; non-layer time {doc['overhead_us'] / 1e3:.2f} ms")
    saved = (f"saved [bold]{doc['name']}[/bold] ({doc['path']})"
             + (f" and {doc['out']}" if doc["out"] else "")
             + f" in {doc['profile_s']:.1f} s{overhead}")
    return [table, saved]


def profiles_view(doc: Document) -> list[RenderableType]:
    """`allocator profiles`: the stored latency tables."""
    table = Table(title=f"latency profiles in {doc['directory']}")
    table.add_column("name", no_wrap=True)
    table.add_column("model", no_wrap=True)
    for col in ("batch", "entries"):
        table.add_column(col, justify="right")
    table.add_column("device")
    table.add_column("created", no_wrap=True)
    for p in doc["profiles"]:
        if p["error"]:
            table.add_row(p["name"], "-", "-", "-", f"[red]invalid: {p['error']}[/red]", "-")
        else:
            table.add_row(p["name"], p["model"] or "-", str(p["batch"]), str(p["entries"]),
                          p["device"], p["created"][:10])
    return [table]


def demo_view(rows: Sequence[DemoRow]) -> list[RenderableType]:
    """`allocator demo`: speed, error and size of each configuration and batch."""
    columns = ("config", "rows", "latency", "speed-up", "SQNR", "size", "kernels")
    table = _table("DemoMLP 1024-4096-1024, measured on this machine", columns,
                   right=("rows", "latency", "speed-up", "SQNR", "size"))
    for r in rows:
        table.add_row(r.config, str(r.rows), f"{r.latency_us:,.0f} us", f"{r.speedup:.2f}x",
                      "-" if r.config == "fp32" else f"{r.sqnr_db:.1f} dB",
                      _mib(r.size_bytes), r.kernels)
    return [table]


def job_result_lines(result: Document) -> list[str]:
    """A finished job's result (`GET /jobs/{id}/result`) as plain lines."""
    config, measured, uniform = result["config"], result["measured"], result["uniform"]
    cost = config["cost"]
    lines = [f"result: {config['status']} ({config['solver']}), "
             f"{cost['avg_bits']:.2f} avg bits, objective {config['objective']:.4g}"]
    lines += [f"  {layer:<24} {bits} bits" for layer, bits in config["bits"].items()]
    if measured:
        metric = next(iter(measured["metrics"]))
        line = (f"{metric}: mixed {measured['metrics'][metric]:.5g}, "
                f"FP32 {measured['fp32_metrics'][metric]:.5g}")
        size = (f"size: mixed {measured['size_bytes'] / 1e3:.1f} kB, "
                f"FP32 {measured['fp32_size_bytes'] / 1e3:.1f} kB")
        if uniform:
            line += f", uniform {uniform['bits']} bits {uniform['metrics'][metric]:.5g}"
            size += f", uniform {uniform['size_bytes'] / 1e3:.1f} kB"
        lines += [line, size]
    return lines
