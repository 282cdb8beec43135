// DOM helpers, the error banner and number/date formats shared by the pages.

/** Creates an element: el("td", {class: "x", onclick: f}, "text", childNode, ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (value === true) {
      node.setAttribute(key, "");
    } else {
      node.setAttribute(key, String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function showBanner(message) {
  const banner = document.getElementById("banner");
  document.getElementById("banner-text").textContent = message;
  banner.hidden = false;
}

export function hideBanner() {
  document.getElementById("banner").hidden = true;
}

export function fmtNumber(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x === 0) return "0";
  const abs = Math.abs(x);
  if (abs >= 1e5 || abs < 1e-3) return x.toExponential(2);
  return Number(x.toPrecision(digits)).toString();
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${Math.round(n)} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}

export function fmtSi(x, unit) {
  if (x === null || x === undefined) return "–";
  const steps = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [scale, prefix] of steps) {
    if (Math.abs(x) >= scale) return `${(x / scale).toFixed(2)} ${prefix}${unit}`;
  }
  return `${fmtNumber(x)} ${unit}`;
}

/** A latency given in µs: µs below 1 ms, else ms or s. */
export function fmtLatency(us) {
  if (us === null || us === undefined) return "–";
  if (us < 1000) return `${fmtNumber(us, 3)} µs`;
  if (us < 1e6) return `${fmtNumber(us / 1000, 3)} ms`;
  return `${fmtNumber(us / 1e6, 3)} s`;
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString();
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 10 ? `${s.toFixed(2)} s` : `${s.toFixed(1)} s`;
}

/** Colour of a bit-width on the bit maps: red (few bits) to green (8 bits), grey beyond. */
export function bitsColor(bits) {
  const palette = { 1: "#a50026", 2: "#d73027", 3: "#f46d43", 4: "#fdae61", 5: "#fee08b",
    6: "#a6d96a", 7: "#66bd63", 8: "#1a9850" };
  return palette[bits] || "#9e9e9e";
}

/** Offers `data` as a JSON file download. */
export function downloadJson(filename, data) {
  const blob = new Blob([JSON.stringify(data, null, 1) + "\n"], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function statusBadge(status) {
  return el("span", { class: `badge status-${status}` }, status);
}

export function progressBar(job) {
  const pct = Math.round(100 * Math.max(0, Math.min(1, job.progress ?? 0)));
  return el("div", { class: "progress", title: `${job.stage} · ${pct}%` },
    el("div", { class: `progress-fill status-${job.status}`, style: `width:${pct}%` }),
    el("span", { class: "progress-label" }, `${job.stage ?? ""} ${pct}%`));
}
