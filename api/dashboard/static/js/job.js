// The page of one job: its state (live while it runs), result summary, Pareto front with a
// second job to compare, the bit map of a clicked point, and downloads.

import { api, ApiError, getToken } from "./api.js";
import { COST_KINDS, costKindFor, renderBitmap } from "./bitmap.js";
import { availableAxes, AXES, bitsOf, buildFigure, jobPoints } from "./front.js";
import { loadPlotly } from "./plotly_loader.js";
import { isActive } from "./settings.js";
import {
  downloadJson, el, fmtBytes, fmtLatency, fmtNumber, fmtSeconds, fmtTime, progressBar,
  showBanner, statusBadge,
} from "./ui.js";

const POLL_MS = 1500;

function shortId(id) {
  return id.slice(0, 8);
}

function seriesLabel(jobId, pareto) {
  return pareto.model ? `${shortId(jobId)} ${pareto.model}` : `job ${shortId(jobId)}`;
}

function metaCard(job) {
  const rows = [
    ["Status", statusBadge(job.status)],
    ["Progress", progressBar(job)],
    [job.kind === "problem" ? "Problem" : "Model", job.model ?? "(problem file)"],
    ["Budgets", (job.budgets || []).join(", ")],
    ["Solver", job.solver],
    ["Sensitivity", job.estimator],
    ["Candidate bits", (job.bits || []).join(", ")],
    ["Seed", job.seed],
    ["Measure", job.measure ? "yes" : "no"],
    ...(job.ties?.length ? [["Tied layers", job.ties.join("  ·  ")]] : []),
    ...(job.fix?.length ? [["Pinned layers", job.fix.join("  ·  ")]] : []),
    ["Created", fmtTime(job.created_at)],
    ["Started", fmtTime(job.started_at)],
    ["Finished", fmtTime(job.finished_at)],
  ];
  const timings = Object.entries(job.timings_s || {});
  return el("section", { class: "card", id: "job-meta" },
    el("h2", {}, "Job ", el("span", { class: "mono" }, job.id)),
    el("dl", { class: "meta" }, rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    timings.length ? el("p", { class: "muted" }, "Timings: ",
      timings.map(([k, v]) => `${k} ${typeof v === "number" ? fmtSeconds(v) : v}`).join(" · "))
      : null,
    job.status === "failed" ? el("div", { class: "error-box", id: "job-error" },
      el("b", {}, "This job failed: "), job.error || "no error message was recorded") : null,
    job.status === "cancelled" ? el("div", { class: "note" }, "This job was cancelled.",
      job.error ? ` ${job.error}` : "") : null);
}

function resultCard(result, metric) {
  const cfg = result.config;
  const m = result.measured || {};
  const u = result.uniform || {};
  const metricOf = (metrics) => (metric && metrics ? metrics[metric] : undefined);
  const table = el("table", { class: "table compact", id: "result-table" },
    el("thead", {}, el("tr", {}, ["", "avg bits", "predicted Ω", `measured ${metric ?? "metric"}`,
      "size", "latency"].map((h) => el("th", {}, h)))),
    el("tbody", {},
      el("tr", {}, el("th", {}, "chosen"), el("td", {}, fmtNumber(cfg.cost?.avg_bits)),
        el("td", {}, fmtNumber(cfg.objective)), el("td", {}, fmtNumber(metricOf(m.metrics))),
        el("td", {}, fmtBytes(m.size_bytes ?? cfg.cost?.size_bytes)),
        el("td", {}, fmtLatency(m.latency_us))),
      u.bits !== undefined ? el("tr", {}, el("th", {}, `best uniform (${u.bits}-bit)`),
        el("td", {}, fmtNumber(u.cost?.avg_bits)), el("td", {}, fmtNumber(u.objective)),
        el("td", {}, fmtNumber(metricOf(u.metrics))), el("td", {}, fmtBytes(u.size_bytes)),
        el("td", {}, fmtLatency(m.uniform?.latency_us)))
        : null,
      m.fp32_metrics ? el("tr", {}, el("th", {}, "FP32"), el("td", {}, "32"), el("td", {}, "0"),
        el("td", {}, fmtNumber(metricOf(m.fp32_metrics))), el("td", {}, fmtBytes(m.fp32_size_bytes)),
        el("td", {}, fmtLatency(m.fp32_latency_us))) : null));
  const infeasible = cfg.status === "infeasible";
  const diagnosis = cfg.extra?.infeasible_budgets;
  const rules = cfg.extra?.rules;
  return el("section", { class: "card", id: "result" },
    el("h2", {}, "Result"),
    el("p", {}, `Solver ${cfg.solver ?? "?"} answered `, el("b", {}, cfg.status ?? "?"),
      ` for ${(cfg.budgets || []).join(", ")}.`),
    infeasible ? el("div", { class: "error-box" }, "The budgets cannot be met",
      diagnosis ? `: smallest feasible values ${JSON.stringify(diagnosis)}` : ".") : null,
    rules ? el("p", { id: "rules-held", class: rules.held ? "muted" : "error-box" },
      `${rules.ties} tie group(s) (${rules.tied_layers ?? "?"} layers) and ${rules.fixed} `
      + `pinned layer(s): ${rules.held ? "every tie and pin held"
        : `broken: ${(rules.broken || []).join("; ")}`}.`) : null,
    table);
}

class FrontView {
  constructor(root, job, pareto, result, compareId) {
    this.root = root;
    this.job = job;
    this.main = { jobId: job.id, label: seriesLabel(job.id, pareto), pareto, result,
      problem: result?.problem || null, points: jobPoints(job.id, pareto, result) };
    this.compare = null;
    this.selectedKey = this.main.points.chosen?.key ?? this.main.points.all[0]?.key ?? null;
    const axes = availableAxes(this.main.points.all);
    this.axisKey = axes.some((a) => a.key === pareto.cost_key) ? pareto.cost_key
      : (axes[0]?.key ?? "avg_bits");
    this.costKey = null;
    this.build(compareId);
  }

  series() {
    return this.compare ? [this.main, this.compare] : [this.main];
  }

  pointByKey(key) {
    for (const s of this.series()) {
      const p = s.points.all.find((x) => x.key === key);
      if (p) return { point: p, series: s };
    }
    return null;
  }

  build(compareId) {
    this.axisSelect = el("select", { id: "axis-select", onchange: (e) => {
      this.axisKey = e.target.value;
      this.costKey = null;
      this.draw();
    } });
    this.compareSelect = el("select", { id: "compare-select",
      onchange: (e) => this.setCompare(e.target.value) },
    el("option", { value: "" }, "none"));
    this.plotDiv = el("div", { id: "front-plot", class: "plot" });
    this.pointsBody = el("tbody");
    this.bitmapBox = el("div", { id: "bitmap" });
    this.costSelect = el("select", { id: "cost-select", onchange: (e) => {
      this.costKey = e.target.value;
      this.drawBitmap();
    } }, Object.entries(COST_KINDS).map(([k, v]) => el("option", { value: k }, v.label)));
    const downloads = el("div", { class: "row" },
      el("button", { type: "button", id: "download-config", disabled: !this.main.result,
        onclick: () => downloadJson(`bitconfig-${shortId(this.job.id)}.json`,
          this.main.result.config) }, "Download chosen BitConfig"),
      el("button", { type: "button", id: "download-front",
        onclick: () => downloadJson(`pareto-${shortId(this.job.id)}.json`, this.main.pareto) },
      "Download front JSON"),
      el("button", { type: "button", id: "download-point",
        onclick: () => this.downloadSelected() }, "Download selected point as BitConfig"));
    this.root.append(
      el("section", { class: "card", id: "front" },
        el("div", { class: "row between" }, el("h2", {}, "Pareto front"),
          el("div", { class: "row" },
            el("label", {}, "Cost axis ", this.axisSelect),
            el("label", {}, "Compare with ", this.compareSelect))),
        el("p", { class: "muted" }, "Circles: predicted Ω of the front; diamonds: measured ",
          "metric of the same points; squares: uniform bit-widths; star: the job's answer. ",
          "Hover for a point's per-layer bits, click it for its bit map."),
        this.plotDiv,
        el("details", { open: true }, el("summary", {}, "Points"),
          el("div", { class: "table-wrap" }, el("table", { class: "table compact", id: "points-table" },
            el("thead", {}, el("tr", {}, ["job", "point", "avg bits", "size", "BOPs",
              "predicted Ω", "measured metric", "measured latency"].map((h) => el("th", {}, h)))),
            this.pointsBody))),
        downloads),
      el("section", { class: "card", id: "bitmap-card" },
        el("div", { class: "row between" }, el("h2", {}, "Per-layer bit map"),
          el("label", {}, "Cost per bit-width ", this.costSelect)),
        this.bitmapBox));
    this.loadCompareChoices(compareId);
  }

  async loadCompareChoices(compareId) {
    try {
      const data = await api("/jobs?status=succeeded&limit=100");
      const others = data.items.filter((j) => j.id !== this.job.id);
      for (const j of others) {
        this.compareSelect.append(el("option", { value: j.id, selected: j.id === compareId },
          `${shortId(j.id)} · ${j.model ?? "problem"} · ${(j.budgets || []).join(",")} · ${j.solver}`));
      }
      if (compareId && !others.some((j) => j.id === compareId)) {
        this.compareSelect.append(el("option", { value: compareId, selected: true },
          shortId(compareId)));
      }
    } catch (err) {
      showBanner(`Jobs to compare: ${err.message}`);
    }
    if (compareId) await this.setCompare(compareId);
  }

  async setCompare(otherId) {
    const url = new URL(window.location.href);
    if (otherId) url.searchParams.set("compare", otherId);
    else url.searchParams.delete("compare");
    window.history.replaceState(null, "", url);
    if (!otherId) {
      this.compare = null;
      this.draw();
      return;
    }
    try {
      const [pareto, result] = await Promise.all([
        api(`/jobs/${encodeURIComponent(otherId)}/pareto`),
        api(`/jobs/${encodeURIComponent(otherId)}/result`).catch(() => null),
      ]);
      this.compare = { jobId: otherId, label: seriesLabel(otherId, pareto), pareto, result,
        problem: result?.problem || null, points: jobPoints(otherId, pareto, result) };
    } catch (err) {
      this.compare = null;
      showBanner(`Cannot compare with job ${shortId(otherId)}: ${err.message}`);
    }
    this.draw();
  }

  renderAxisOptions() {
    const points = this.series().flatMap((s) => s.points.all);
    const axes = availableAxes(points);
    if (!axes.some((a) => a.key === this.axisKey)) this.axisKey = axes[0]?.key ?? "avg_bits";
    this.axisSelect.replaceChildren(...AXES.map((a) => el("option", {
      value: a.key, selected: a.key === this.axisKey, disabled: !axes.includes(a),
    }, axes.includes(a) ? a.label : `${a.label} (not measured)`)));
  }

  renderPointsTable(metric) {
    const rows = this.series().flatMap((s) => s.points.all.map((p) => el("tr", {
      class: `clickable${p.key === this.selectedKey ? " selected" : ""}`, "data-point-key": p.key,
      onclick: () => this.select(p.key),
    }, el("td", {}, s.label), el("td", {}, p.label), el("td", {}, fmtNumber(p.cost?.avg_bits)),
    el("td", {}, fmtBytes(p.cost?.size_bytes)), el("td", {}, fmtNumber(p.cost?.bops)),
    el("td", {}, fmtNumber(p.objective)),
    el("td", {}, metric && p.metrics ? fmtNumber(p.metrics[metric]) : "–"),
    el("td", {}, fmtLatency(p.measuredLatencyUs)))));
    this.pointsBody.replaceChildren(...rows);
  }

  async draw() {
    this.renderAxisOptions();
    const figure = buildFigure(this.series(), this.axisKey, this.selectedKey);
    this.renderPointsTable(figure.metric);
    this.drawBitmap();
    let Plotly;
    try {
      Plotly = await loadPlotly();
    } catch (err) {
      this.plotDiv.replaceChildren(el("p", { class: "error" }, err.message));
      showBanner(err.message);
      return;
    }
    await Plotly.react(this.plotDiv, figure.traces, figure.layout,
      { responsive: true, displaylogo: false });
    if (!this.plotDiv.dataset.bound) {
      this.plotDiv.on("plotly_click", (event) => {
        const key = event.points?.[0]?.customdata;
        if (typeof key === "string") this.select(key);
      });
      this.plotDiv.dataset.bound = "1";
    }
    this.plotDiv.dataset.ready = String(Number(this.plotDiv.dataset.ready || 0) + 1);
  }

  select(key) {
    this.selectedKey = key;
    this.draw();
    document.getElementById("bitmap-card")?.scrollIntoView({ behavior: "smooth", block: "nearest" });
  }

  drawBitmap() {
    const found = this.selectedKey ? this.pointByKey(this.selectedKey) : null;
    if (!found) {
      this.bitmapBox.replaceChildren(el("p", { class: "muted" }, "Click a point of the front."));
      return;
    }
    const { point, series } = found;
    if (!series.problem) {
      this.bitmapBox.replaceChildren(el("p", { class: "error" },
        `The result of ${series.label} (its problem tables) could not be loaded.`));
      return;
    }
    const costKey = this.costKey || costKindFor(this.axisKey, series.problem);
    this.costSelect.value = costKey;
    this.bitmapBox.replaceChildren(renderBitmap(point, series.problem, costKey, series.label));
  }

  downloadSelected() {
    const found = this.selectedKey ? this.pointByKey(this.selectedKey) : null;
    if (!found) {
      showBanner("Select a point first.");
      return;
    }
    const { point, series } = found;
    const base = series.result?.config || { format: "allocator.bitconfig/1" };
    // The engine settings of the job's own answer, with this point's bits and predicted cost;
    // the chosen point's measurements do not describe another point, so `extra` is dropped.
    const config = {
      ...base, bits: bitsOf(point, series.problem), cost: point.cost,
      objective: point.objective, status: point.status ?? base.status,
      solver: point.solver ?? base.solver, budgets: point.group === "chosen" ? base.budgets : [],
      solve_s: null,
      extra: { source: `${point.label} of job ${series.jobId}` },
    };
    downloadJson(`bitconfig-${shortId(series.jobId)}-${point.label.replace(/\W+/g, "-")}.json`,
      config);
  }
}

const EXPORT_FORMATS = [
  ["onnx", "ONNX (.onnx)"],
  ["compressed-tensors", "compressed-tensors (.zip, vLLM)"],
  ["gguf", "GGUF (.gguf, llama.cpp)"],
];

/** GET /jobs/{id}/export?format=F until it answers the file (202: exporting, polled after
 * Retry-After); saves the file, or says the exporter's error. */
async function downloadExport(job, format, say) {
  const path = `/jobs/${encodeURIComponent(job.id)}/export?format=${encodeURIComponent(format)}`;
  const headers = {};
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  for (;;) {
    let response;
    try {
      response = await fetch(path, { headers });
    } catch (err) {
      say(`cannot reach the service: ${err.message}`, true);
      return;
    }
    if (response.status === 202) {
      say(`exporting to ${format}... (the engine quantizes, the format's library checks)`);
      const wait = Number(response.headers.get("Retry-After")) || 5;
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      continue;
    }
    if (!response.ok) {
      let detail = `HTTP ${response.status}`;
      try {
        detail = (await response.json()).detail || detail;
      } catch {
        // not JSON: the status says enough
      }
      say(detail, true);
      return;
    }
    const blob = await response.blob();
    const match = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
    const a = el("a", { href: URL.createObjectURL(blob), download: match ? match[1] : format });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    say(`downloaded ${format} (${fmtBytes(blob.size)})`);
    return;
  }
}

function exportCard(job, config) {
  const target = config?.extra?.target || "engine";
  const note = el("p", { class: "muted", id: "export-status" },
    target === "engine"
      ? "Solved for the engine: export formats whose schemes it already uses (ONNX), or "
        + "re-submit with a target."
      : `Solved for target ${target}: its export has the measured integers.`);
  const say = (text, error = false) => {
    note.textContent = text;
    note.className = error ? "error-box" : "muted";
  };
  const buttons = EXPORT_FORMATS.map(([format, label]) => {
    const button = el("button", { type: "button", "data-format": format,
      onclick: async () => {
        buttons.forEach((b) => { b.disabled = true; });
        try {
          await downloadExport(job, format, say);
        } finally {
          buttons.forEach((b) => { b.disabled = false; });
        }
      } }, label);
    return button;
  });
  return el("section", { class: "card", id: "export" }, el("h2", {}, "Deploy"),
    el("div", { class: "actions" }, ...buttons), note);
}

async function loadFinished(root, job, compareId) {
  const [result, pareto] = await Promise.all([
    api(`/jobs/${job.id}/result`).catch((err) => err),
    api(`/jobs/${job.id}/pareto`).catch((err) => err),
  ]);
  const metric = pareto instanceof Error ? null : pareto.metric;
  if (result instanceof Error) {
    root.append(el("div", { class: "error-box" }, `Result: ${result.message}`));
  } else {
    root.append(resultCard(result, metric));
    if (job.kind === "model") root.append(exportCard(job, result.config));
  }
  if (pareto instanceof Error) {
    root.append(el("div", { class: "error-box", id: "front-error" },
      `Pareto front: ${pareto.message}`));
    return;
  }
  const view = new FrontView(root, job, pareto, result instanceof Error ? null : result,
    compareId);
  await view.draw();
}

/** Renders the page of job `jobId` into `root`; while it runs, polls and re-renders. */
export async function renderJobPage(root, jobId, compareId) {
  document.title = `allocator: job ${shortId(jobId)}`;
  root.append(el("p", {}, el("a", { href: "/" }, "← all jobs")));
  let job;
  try {
    job = await api(`/jobs/${encodeURIComponent(jobId)}`);
  } catch (err) {
    const message = err instanceof ApiError && err.status === 404
      ? `No job ${jobId}: ${err.message}` : `Job ${jobId}: ${err.message}`;
    root.append(el("div", { class: "error-box", id: "job-error" }, message));
    showBanner(message);
    return;
  }
  let meta = metaCard(job);
  root.append(meta);
  if (isActive(job.status)) {
    // Live progress; once the job ends the page is rebuilt with its result.
    while (isActive(job.status)) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      if (!root.isConnected) return;  // the page was rendered anew
      try {
        job = await api(`/jobs/${encodeURIComponent(jobId)}`);
      } catch (err) {
        showBanner(`Job ${shortId(jobId)}: ${err.message}`);
        continue;
      }
      const next = metaCard(job);
      meta.replaceWith(next);
      meta = next;
    }
  }
  if (job.status === "succeeded" && root.isConnected) {
    await loadFinished(root, job, compareId);
  }
}
