// The per-layer bit map of one point: layers in model order coloured by bits, and each
// layer's Ω and cost per candidate bit-width (from the job's allocator.problem/1).

import { bitsOf } from "./front.js";
import { bitsColor, el, fmtBytes, fmtLatency, fmtNumber, fmtSi } from "./ui.js";

/** Per-layer cost kinds shown beside Ω; `of` mirrors allocator.Problem's defaults. */
export const COST_KINDS = {
  size_bytes: { label: "size", fmt: fmtBytes,
    of: (layer, b) => layer.size_bytes?.[b] ?? (layer.params * b) / 8 },
  bops: { label: "BOPs", fmt: (v) => fmtSi(v, "BOPs"),
    of: (layer, b, problem) => layer.bops?.[b] ?? layer.macs * b * (problem.activation_bits ?? 8) },
  latency_us: { label: "latency", fmt: fmtLatency,
    of: (layer, b) => layer.latency_us?.[b] ?? null },
};

/** The cost kind to show for a front axis (bits and measured latency have no per-layer table). */
export function costKindFor(axisKey, problem) {
  const hasLatency = problem.layers.some((l) => l.latency_us);
  if ((axisKey === "latency_us" || axisKey === "measured_latency_us") && hasLatency) {
    return "latency_us";
  }
  return axisKey === "bops" ? "bops" : "size_bytes";
}

function candidateBits(layer, problem) {
  if (layer.fixed_bits !== undefined && layer.fixed_bits !== null) return [layer.fixed_bits];
  return layer.allowed_bits || problem.bits;
}

function legend(bitsUsed) {
  return el("div", { class: "bit-legend" }, "bits:",
    bitsUsed.map((b) => el("span", { class: "legend-item" },
      el("span", { class: "swatch", style: `background:${bitsColor(b)}` }), String(b))));
}

/**
 * The bit map of `point` on `problem`: a strip of layer cells, then a table with, per layer,
 * its bits and Ω / cost at every candidate width (the chosen width outlined).
 */
export function renderBitmap(point, problem, costKey, seriesLabel) {
  const cost = COST_KINDS[costKey] || COST_KINDS.size_bytes;
  const bits = bitsOf(point, problem);
  const layers = problem.layers;
  const missing = layers.filter((l) => bits[l.name] === undefined).length;
  const omegaOf = (layer, b) => layer.omega?.[b] ?? layer.omega?.[String(b)];
  const total = layers.reduce((acc, l) => acc + (omegaOf(l, bits[l.name]) ?? 0), 0);

  const strip = el("div", { class: "bit-strip", role: "list" }, layers.map((layer, i) => {
    const b = bits[layer.name];
    return el("div", {
      class: "bit-cell", role: "listitem", "data-layer": layer.name, "data-bits": b ?? "",
      style: `background:${b === undefined ? "#eee" : bitsColor(b)}`,
      title: `#${i + 1} ${layer.name}: ${b ?? "float"} bits · Ω ${fmtNumber(omegaOf(layer, b))}`,
    }, b ?? "–");
  }));

  const widths = problem.bits;
  const head = el("tr", {}, el("th", {}, "#"), el("th", {}, "layer"), el("th", {}, "params"),
    el("th", {}, "bits"), el("th", { title: "share of the point's predicted Ω" }, "Ω share"),
    widths.map((b) => el("th", { class: "num" }, `${b}b: Ω / ${cost.label}`)));
  const rows = layers.map((layer, i) => {
    const b = bits[layer.name];
    const allowed = candidateBits(layer, problem);
    const omega = omegaOf(layer, b);
    return el("tr", { "data-layer": layer.name },
      el("td", { class: "muted" }, String(i + 1)),
      el("td", { class: "mono" }, layer.name),
      el("td", { class: "num" }, fmtSi(layer.params, "")),
      el("td", {}, el("span", { class: "bit-chip", style: `background:${bitsColor(b)}` },
        b ?? "float")),
      el("td", { class: "num" }, total > 0 && omega !== undefined
        ? `${(100 * omega / total).toFixed(1)}%` : "–"),
      widths.map((w) => {
        if (!allowed.includes(w)) return el("td", { class: "num muted" }, "–");
        return el("td", { class: `num${w === b ? " chosen-cell" : ""}` },
          el("div", {}, fmtNumber(omegaOf(layer, w))),
          el("div", { class: "muted" }, cost.fmt(cost.of(layer, w, problem))));
      }));
  });

  const used = [...new Set(Object.values(bits))].sort((a, b) => a - b);
  return el("div", { class: "bitmap", "data-point-key": point.key },
    el("p", {}, el("b", {}, `${seriesLabel} · ${point.label}`),
      ` · ${layers.length} layers in model order · predicted Ω ${fmtNumber(point.objective)}`,
      missing ? el("span", { class: "muted" }, ` · ${missing} layers not in this point (float)`)
        : null),
    legend(used), strip,
    el("div", { class: "table-wrap" }, el("table", { class: "table bitmap-table" },
      el("thead", {}, head), el("tbody", {}, rows))));
}
