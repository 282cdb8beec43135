// The job list (live progress while jobs run) and the form that submits a job.

import { api, ApiError } from "./api.js";
import { isActive, settings } from "./settings.js";
import {
  el, fmtTime, hideBanner, progressBar, showBanner, statusBadge,
} from "./ui.js";

const PAGE_SIZE = 50;
const FAST_POLL_MS = 1500;
const SLOW_POLL_MS = 10000;
// The model the form offers first, when installed (a small one that runs in seconds).
const PREFERRED_MODEL = "digits-cnn";

/** Rule text, one rule per line (a regex may hold commas and spaces), as the API's list. */
export function splitRules(text) {
  return (text || "").split(/\r?\n/).map((s) => s.trim()).filter(Boolean);
}

/** Splits budget text ("4bits, 12MB" or "4bits 12MB") into the list the API takes. */
export function splitBudgets(text) {
  return text.split(/[,;\s]+/).map((s) => s.trim()).filter(Boolean);
}

function jobRow(job, onCancel) {
  const budgets = (job.budgets || []).join(", ");
  const target = job.model ?? (job.kind === "problem" ? "(problem file)" : "–");
  const cancel = isActive(job.status)
    ? el("button", { type: "button", class: "small", onclick: () => onCancel(job) }, "Cancel")
    : null;
  return el("tr", { "data-job-id": job.id, "data-status": job.status },
    el("td", {}, el("a", { href: `/ui/jobs/${job.id}`, class: "mono" }, job.id.slice(0, 8))),
    el("td", {}, statusBadge(job.status),
      job.error ? el("div", { class: "error small-text" }, job.error) : null),
    el("td", {}, progressBar(job)),
    el("td", {}, target),
    el("td", {}, budgets),
    el("td", {}, job.solver),
    el("td", {}, (job.bits || []).join(",")),
    el("td", { title: job.created_at }, fmtTime(job.created_at)),
    el("td", {}, cancel));
}

class JobList {
  constructor(root) {
    this.root = root;
    this.offset = 0;
    this.statusFilter = "";
    this.modelFilter = "";
    this.timer = null;
    this.tbody = el("tbody");
    this.summary = el("span", { class: "muted" });
    this.prev = el("button", { type: "button", onclick: () => this.page(-1) }, "← Newer");
    this.next = el("button", { type: "button", onclick: () => this.page(1) }, "Older →");
    const filter = el("select", { id: "status-filter", onchange: (e) => {
      this.statusFilter = e.target.value;
      this.offset = 0;
      this.refresh();
    } }, ["", ...settings().statuses].map(
      (s) => el("option", { value: s }, s || "all statuses")));
    this.modelSelect = el("select", { id: "model-filter", onchange: (e) => {
      this.modelFilter = e.target.value;
      this.offset = 0;
      this.refresh();
    } }, el("option", { value: "" }, "all models"));
    this.section = el("section", { class: "card" },
      el("div", { class: "row between" }, el("h2", {}, "Jobs"),
        el("div", { class: "row" }, filter, this.modelSelect, this.prev, this.next,
          this.summary)),
      el("table", { id: "jobs-table", class: "table" },
        el("thead", {}, el("tr", {}, ["Job", "Status", "Progress", "Model", "Budgets",
          "Solver", "Bits", "Created", ""].map((h) => el("th", {}, h)))),
        this.tbody));
    root.append(this.section);
  }

  page(step) {
    this.offset = Math.max(0, this.offset + step * PAGE_SIZE);
    this.refresh();
  }

  async cancel(job) {
    try {
      await api(`/jobs/${job.id}/cancel`, { method: "POST" });
      hideBanner();
    } catch (err) {
      showBanner(`Cancel of job ${job.id.slice(0, 8)} failed: ${err.message}`);
    }
    this.refresh();
  }

  async refresh() {
    clearTimeout(this.timer);
    if (!this.section.isConnected) return;  // the page was rendered anew
    let active = false;
    try {
      const query = new URLSearchParams({ limit: PAGE_SIZE, offset: this.offset });
      if (this.statusFilter) query.set("status", this.statusFilter);
      if (this.modelFilter) query.set("model", this.modelFilter);
      const data = await api(`/jobs?${query}`);
      const rows = data.items.map((job) => jobRow(job, (j) => this.cancel(j)));
      this.tbody.replaceChildren(...(rows.length ? rows
        : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No jobs yet: submit one below."))]));
      active = data.items.some((job) => isActive(job.status));
      const last = Math.min(data.total, this.offset + data.items.length);
      this.summary.textContent = data.total
        ? `${this.offset + 1}–${last} of ${data.total}` : "";
      this.prev.disabled = this.offset === 0;
      this.next.disabled = last >= data.total;
      this.section.classList.remove("stale");
    } catch (err) {
      this.section.classList.add("stale");
      showBanner(`Job list: ${err.message}`);
    }
    // Poll fast while something runs, slowly otherwise (jobs submitted elsewhere show up).
    if (this.section.isConnected) {
      this.timer = setTimeout(() => this.refresh(), active ? FAST_POLL_MS : SLOW_POLL_MS);
    }
  }
}

function optionList(items, selected) {
  return items.map((item) => el("option", {
    value: item.name, disabled: item.available === false, selected: item.name === selected,
    title: item.description || "",
  }, item.available === false ? `${item.name} (not installed)` : item.name));
}

// Option groups of the model list: built-ins (no `origin`), then registered models.
const MODEL_GROUPS = [
  ["built-in", (m) => !m.origin],
  ["models file", (m) => m.origin === "models-file"],
  ["uploaded", (m) => m.origin === "upload"],
];

/** The model options, grouped by origin once any model is registered. */
function modelOptions(models, selected) {
  if (!models.some((m) => m.origin)) return optionList(models, selected);
  return MODEL_GROUPS.map(([label, test]) => {
    const items = models.filter(test).map((m) => m.origin
      ? { ...m, description: [m.description, m.source].filter(Boolean).join(" · ") } : m);
    return items.length ? el("optgroup", { label }, optionList(items, selected)) : null;
  });
}

function listing(path, key) {
  return api(path).then((d) => d[key]).catch((err) => {
    showBanner(`${path}: ${err.message}`);
    return [];
  });
}

async function loadChoices() {
  const [models, solvers, estimators] = await Promise.all([
    listing("/models", "models"), listing("/solvers", "solvers"),
    listing("/estimators", "estimators"),
  ]);
  return { models, solvers, estimators };
}

/** The preferred name when it is listed and available, else the first available one. */
function defaultOf(items, preferred) {
  const usable = items.filter((item) => item.available !== false);
  return (usable.find((item) => item.name === preferred) || usable[0] || {}).name;
}

/** Checks the budget text with the service's own grammar; returns an error message or "". */
async function validateBudgets(budgets) {
  if (!budgets.length) return "enter at least one budget, e.g. 4bits or 12MB";
  try {
    await api("/budgets/validate", { method: "POST", body: { budgets } });
    return "";
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return "";  // checked again on submit
    return err.message;
  }
}

/** min..max: every bit-width the service accepts. */
function bitRange(min, max) {
  return Array.from({ length: max - min + 1 }, (_, i) => min + i);
}

function renderForm(root, choices, onSubmitted) {
  const { models, solvers, estimators } = choices;
  const { default_bits: defaultBits, min_bits: minBits, max_bits: maxBits,
    job_defaults: defaults, write_requires_token: writesNeedToken } = settings();
  const targets = settings().targets || [];
  const bitBoxes = bitRange(minBits, maxBits).map((b) => el("label", { class: "check" },
    el("input", { type: "checkbox", name: "bits", value: b, checked: defaultBits.includes(b) }),
    String(b)));
  const budgetError = el("div", { id: "budget-error", class: "field-error", "aria-live": "polite" });
  const formError = el("div", { id: "form-error", class: "field-error", "aria-live": "polite" });
  const submitButton = el("button", { type: "submit", id: "submit-job" }, "Submit job");
  const form = el("form", { id: "job-form", class: "card form", novalidate: true },
    el("h2", {}, "New job"),
    el("div", { class: "grid" },
      el("label", {}, "Model", el("select", { name: "model", id: "model-select", required: true },
        modelOptions(models, defaultOf(models, PREFERRED_MODEL)))),
      el("label", {}, "Budgets",
        el("input", { name: "budgets", id: "budget-input", value: "4bits", required: true,
          placeholder: "4bits, 12MB, 1.2GBOPs", spellcheck: "false" }),
        budgetError),
      el("label", {}, "Solver", el("select", { name: "solver", id: "solver-select" },
        optionList(solvers, defaultOf(solvers, defaults.solver)))),
      el("label", {}, "Sensitivity", el("select", { name: "estimator", id: "estimator-select" },
        el("option", { value: "", selected: !defaults.estimator,
                       title: "hutchinson; fisher for causal LMs; a registration's own" },
           "the model's own"),
        ...optionList(estimators, defaults.estimator && defaultOf(estimators,
                                                                  defaults.estimator)))),
      el("label", {}, "Deploy to", el("select", { name: "target", id: "target-select",
        title: "The format the result is exported to: its schemes are measured and its "
          + "file's bytes counted (a bits budget is its bits per weight)" },
        ...targets.map((t) => el("option", { value: t.name, title: t.description,
          selected: t.name === "engine" }, t.name)))),
      el("fieldset", { class: "bits" }, el("legend", {}, "Candidate bits"), bitBoxes),
      el("label", {}, "Seed", el("input", { name: "seed", id: "seed-input", type: "number",
        value: defaults.seed, min: 0, step: 1 })),
      el("label", { class: "check" }, el("input", { type: "checkbox", name: "measure",
        checked: defaults.measure }), "apply and measure"),
      el("label", {}, "Tie layers (optional, one rule per line)",
        el("textarea", { name: "ties", id: "ties-input", rows: 2, spellcheck: "false",
          placeholder: "re:\\.(q|k|v)_proj$\nfc1,fc2",
          title: "Layers that take one bit-width. re:REGEX groups matches per block (the "
            + "name without the matched part); a,b,c is one group." })),
      el("label", {}, "Pin layers (optional, one rule per line)",
        el("textarea", { name: "fix", id: "fix-input", rows: 2, spellcheck: "false",
          placeholder: "lm_head=8\nre:^model\\.layers\\.0\\.=8",
          title: "NAME=BITS, a,b=BITS or re:REGEX=BITS; the width must be a candidate." }))),
    el("div", { class: "row" }, submitButton,
      writesNeedToken ? el("span", { class: "muted read-only-hint" },
        "Read-only: this service needs its API token (top right) to submit jobs.") : null),
    formError);

  const budgetInput = form.querySelector("#budget-input");
  let pending = 0;
  const checkBudgets = async () => {
    const ticket = ++pending;
    const message = await validateBudgets(splitBudgets(budgetInput.value));
    if (ticket !== pending) return message;  // a newer check is under way
    budgetError.textContent = message;
    budgetInput.classList.toggle("invalid", Boolean(message));
    return message;
  };
  let debounce = null;
  budgetInput.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(checkBudgets, 400);
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.textContent = "";
    clearTimeout(debounce);
    const budgets = splitBudgets(budgetInput.value);
    const budgetMessage = await checkBudgets();
    if (budgetMessage) return;
    const data = new FormData(form);
    const bits = data.getAll("bits").map(Number);
    if (!bits.length) {
      formError.textContent = "choose at least one candidate bit-width";
      return;
    }
    const seed = Number.parseInt(data.get("seed"), 10);
    if (!Number.isInteger(seed) || seed < 0) {
      formError.textContent = `seed must be a non-negative integer, got ${data.get("seed")}`;
      return;
    }
    const ties = splitRules(data.get("ties"));
    const fix = splitRules(data.get("fix"));
    const body = {
      model: data.get("model"), budgets, solver: data.get("solver"),
      estimator: data.get("estimator") || undefined,  // "": the model's own
      bits, seed, measure: data.get("measure") === "on",
      ...(ties.length ? { ties } : {}), ...(fix.length ? { fix } : {}),
      ...(data.get("target") && data.get("target") !== "engine"
        ? { target: data.get("target") } : {}),
    };
    submitButton.disabled = true;
    try {
      const job = await api("/jobs", { method: "POST", body });
      formError.textContent = "";
      form.dataset.lastJob = job.id;
      onSubmitted(job);
    } catch (err) {
      const where = err.field ? ` (${err.field})` : "";
      formError.textContent = `Not submitted${where}: ${err.message}`;
    } finally {
      submitButton.disabled = false;
    }
  });
  root.append(form);
}

/** Renders the job list and the submit form into `root`. */
export async function renderJobList(root) {
  document.title = "allocator: jobs";
  const list = new JobList(root);
  const choices = await loadChoices();
  list.modelSelect.append(...choices.models.map((m) => el("option", { value: m.name }, m.name)));
  renderForm(root, choices, () => list.refresh());
  await list.refresh();
}
