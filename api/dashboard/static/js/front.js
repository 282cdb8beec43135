// Pareto fronts as plain data (points of a job: front, chosen, uniform) and their plotly figure.

import { fmtBytes, fmtLatency, fmtNumber, fmtSi } from "./ui.js";

/** Cost axes of the front; `value` reads a point, `fmt` formats a value for hover text. */
export const AXES = [
  { key: "avg_bits", label: "average weight bits", value: (p) => p.cost?.avg_bits,
    fmt: (v) => `${fmtNumber(v)} bits` },
  { key: "size_bytes", label: "size (bytes, predicted)", value: (p) => p.cost?.size_bytes,
    fmt: fmtBytes },
  { key: "bops", label: "BOPs", value: (p) => p.cost?.bops, fmt: (v) => fmtSi(v, "BOPs") },
  { key: "latency_us", label: "predicted latency (µs)", value: (p) => p.cost?.latency_us,
    fmt: fmtLatency },
  { key: "measured_latency_us", label: "measured latency (µs)",
    value: (p) => p.measuredLatencyUs, fmt: fmtLatency },
];

export function axisByKey(key) {
  return AXES.find((a) => a.key === key) || AXES[0];
}

const isNum = (v) => typeof v === "number" && Number.isFinite(v);

/** The axes on which at least one of `points` has a value. */
export function availableAxes(points) {
  return AXES.filter((axis) => points.some((p) => isNum(axis.value(p))));
}

/**
 * All points of one job as {key, jobId, group: front|chosen|uniform, label, bits, objective,
 * cost, metrics, measuredLatencyUs}, from its /pareto payload and its /result (optional).
 */
export function jobPoints(jobId, pareto, result) {
  const measured = pareto.measured || [];
  const front = (pareto.points || []).map((p, i) => ({
    key: `${jobId}:front:${i}`, jobId, group: "front", label: `front #${i + 1}`,
    bits: p.bits || {}, objective: p.objective, cost: p.cost || {}, status: p.status,
    solver: p.solver, metrics: measured[i]?.metrics ?? null,
    measuredLatencyUs: measured[i]?.latency_us ?? null,
    measuredSizeBytes: measured[i]?.size_bytes ?? null,
  }));
  const uniform = (pareto.uniform || []).map((u) => ({
    key: `${jobId}:uniform:${u.bits}`, jobId, group: "uniform", label: `uniform ${u.bits}-bit`,
    bits: u.assignment || u.layer_bits || null, uniformBits: u.bits, objective: u.objective, cost: u.cost || {},
    metrics: u.metrics ?? null, measuredLatencyUs: u.latency_us ?? null,
    measuredSizeBytes: u.size_bytes ?? null,
  }));
  let chosen = null;
  const c = pareto.chosen || (result ? {
    cost: result.config.cost, objective: result.config.objective, bits: result.config.bits,
    metrics: result.measured?.metrics ?? null,
  } : null);
  if (c) {
    chosen = {
      key: `${jobId}:chosen:0`, jobId, group: "chosen", label: "chosen", bits: c.bits || {},
      objective: c.objective, cost: c.cost || {}, metrics: c.metrics ?? null,
      measuredLatencyUs: c.latency_us ?? c.measured?.latency_us ?? result?.measured?.latency_us ?? null,
      measuredSizeBytes: c.size_bytes ?? c.measured?.size_bytes ?? result?.measured?.size_bytes ?? null,
      status: c.status ?? result?.config?.status,
    };
  }
  return { jobId, metric: pareto.metric || null, front, uniform, chosen,
    all: [...(chosen ? [chosen] : []), ...front, ...uniform] };
}

/** Per-layer bits of a point; a uniform point without a layer map gets its width everywhere. */
export function bitsOf(point, problem) {
  if (point.bits && Object.keys(point.bits).length) return point.bits;
  if (point.uniformBits && problem) {
    return Object.fromEntries(problem.layers.map((l) => [l.name, l.fixed_bits ?? point.uniformBits]));
  }
  return {};
}

function esc(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;" })[c]);
}

/** "layer: bits" pairs, a few per line, as hover HTML (long models are cut after 12 lines). */
function bitsSummary(bits, perLine = 4, maxLines = 12) {
  const entries = Object.entries(bits || {});
  const lines = [];
  for (let i = 0; i < entries.length; i += perLine) {
    lines.push(entries.slice(i, i + perLine).map(([n, b]) => `${esc(n)}: ${b}`).join("  "));
  }
  if (lines.length > maxLines) {
    const shown = lines.slice(0, maxLines);
    shown.push(`… ${entries.length - maxLines * perLine} more layers`);
    return shown.join("<br>");
  }
  return lines.join("<br>");
}

export function hoverText(point, metric, seriesLabel, problem) {
  const lines = [`<b>${esc(seriesLabel)} · ${esc(point.label)}</b>`,
    `predicted Ω ${fmtNumber(point.objective)}`];
  for (const axis of AXES) {
    const v = axis.value(point);
    if (isNum(v)) lines.push(`${axis.label}: ${axis.fmt(v)}`);
  }
  if (metric && point.metrics && isNum(point.metrics[metric])) {
    lines.push(`measured ${esc(metric)} ${fmtNumber(point.metrics[metric])}`);
  }
  const bits = bitsSummary(bitsOf(point, problem));
  if (bits) lines.push(`<span style="font-family:monospace">${bits}</span>`);
  return lines.join("<br>");
}

const SERIES_COLORS = ["#1f77b4", "#d62728", "#9467bd", "#8c564b"];

/**
 * The figure of one or more jobs' fronts on the same axes: predicted Ω (log) on top, the
 * measured metric below, uniform baselines as squares, each chosen point as a star.
 */
export function buildFigure(series, axisKey, selectedKey) {
  const axis = axisByKey(axisKey);
  const metric = series.find((s) => s.points.metric)?.points.metric || null;
  const anyMeasured = series.some((s) => s.points.all.some(
    (p) => metric && p.metrics && isNum(p.metrics[metric])));
  const traces = [];
  let selected = null;
  series.forEach((s, i) => {
    const color = SERIES_COLORS[i % SERIES_COLORS.length];
    const name = s.label;
    const add = (points, group, opts) => {
      const usable = points.filter((p) => isNum(axis.value(p)));
      const predicted = usable.filter((p) => isNum(p.objective) && p.objective > 0);
      const ys = (p) => p.metrics?.[metric];
      const measured = anyMeasured ? usable.filter((p) => isNum(ys(p))) : [];
      const common = { type: "scatter", hoverinfo: "text", legendgroup: `${name}-${group}` };
      const labels = (pts) => (opts.labels ? pts.map(opts.labels) : undefined);
      if (predicted.length) {
        traces.push({ ...common, ...opts.predicted, x: predicted.map(axis.value),
          y: predicted.map((p) => p.objective), yaxis: "y", text: labels(predicted),
          hovertext: predicted.map((p) => hoverText(p, metric, name, s.problem)),
          customdata: predicted.map((p) => p.key), name: `${name}: ${opts.name} (predicted Ω)`,
          meta: { group, kind: "predicted", jobId: s.jobId } });
      }
      if (measured.length) {
        traces.push({ ...common, ...opts.measured, x: measured.map(axis.value),
          y: measured.map(ys), yaxis: "y2",
          hovertext: measured.map((p) => hoverText(p, metric, name, s.problem)),
          customdata: measured.map((p) => p.key), name: `${name}: ${opts.name} (measured ${metric})`,
          meta: { group, kind: "measured", jobId: s.jobId } });
      }
    };
    const dash = i === 0 ? "solid" : "dash";
    add(s.points.front, "front", {
      name: "front",
      predicted: { mode: "lines+markers", line: { color, dash, width: 1.5 },
        marker: { color, size: 9, symbol: "circle" } },
      measured: { mode: "lines+markers", line: { color, dash: "dot", width: 1 },
        marker: { color, size: 10, symbol: "diamond" } },
    });
    add(s.points.uniform, "uniform", {
      name: "uniform",
      labels: (p) => `${p.uniformBits}b`,
      predicted: { mode: "markers+text", textposition: "top center",
        textfont: { size: 10, color: "#555" },
        marker: { color: "#ffffff", size: 11, symbol: "square", line: { color, width: 2 } } },
      measured: { mode: "markers", marker: { color: "#ffffff", size: 11, symbol: "square-x",
        line: { color, width: 2 } } },
    });
    if (s.points.chosen) {
      add([s.points.chosen], "chosen", {
        name: "chosen",
        predicted: { mode: "markers", marker: { color: "#ffbf00", size: 20, symbol: "star",
          line: { color, width: 2 } } },
        measured: { mode: "markers", marker: { color: "#ffbf00", size: 20, symbol: "star-diamond",
          line: { color, width: 2 } } },
      });
    }
    selected = selected || s.points.all.find((p) => p.key === selectedKey) || null;
  });
  if (selected && isNum(axis.value(selected))) {
    const ring = { type: "scatter", mode: "markers", hoverinfo: "skip", showlegend: false,
      marker: { size: 26, color: "rgba(0,0,0,0)", line: { color: "#111", width: 2 } },
      meta: { group: "selection", kind: "ring" } };
    if (isNum(selected.objective) && selected.objective > 0) {
      traces.push({ ...ring, x: [axis.value(selected)], y: [selected.objective], yaxis: "y" });
    }
    if (anyMeasured && isNum(selected.metrics?.[metric])) {
      traces.push({ ...ring, x: [axis.value(selected)], y: [selected.metrics[metric]], yaxis: "y2" });
    }
  }
  const layout = {
    margin: { l: 70, r: 20, t: 10, b: 50 },
    height: anyMeasured ? 560 : 420,
    hovermode: "closest",
    clickmode: "event",
    legend: { orientation: "h", y: -0.15 },
    xaxis: { title: { text: axis.label }, anchor: anyMeasured ? "y2" : "y", zeroline: false },
    yaxis: { title: { text: "predicted Ω (log)" }, type: "log",
      domain: anyMeasured ? [0.45, 1] : [0, 1] },
  };
  if (anyMeasured) {
    layout.yaxis2 = { title: { text: `measured ${metric}` }, domain: [0, 0.38], anchor: "x" };
  }
  return { traces, layout, metric, anyMeasured };
}
