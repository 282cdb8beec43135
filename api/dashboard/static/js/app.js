// Entry point: the service's settings, token field, error banner and routing between the
// job list and a job page.

import { getToken, setToken, state } from "./api.js";
import { renderJobList } from "./jobs.js";
import { renderJobPage } from "./job.js";
import { loadSettings, settings } from "./settings.js";
import { el, hideBanner, showBanner } from "./ui.js";

function renderTokenState() {
  // The server says whether it needs a token; without one, there is nothing to enter.
  const { write_requires_token: writesNeedToken, read_requires_token: readsNeedToken } =
    settings();
  const token = getToken();
  document.getElementById("token-form").hidden = !writesNeedToken && !readsNeedToken;
  document.getElementById("token-input").value = token;
  document.getElementById("token-state").textContent = !writesNeedToken ? ""
    : (token ? "writes enabled" : "read-only");
  document.body.classList.toggle("read-only", writesNeedToken && !token);
}

function setupChrome() {
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken(document.getElementById("token-input").value.trim());
    renderTokenState();
    if (state.readRefused) {
      state.readRefused = false;
      hideBanner();
      route();
    }
  });
  document.getElementById("banner-close").addEventListener("click", hideBanner);
  renderTokenState();
}

async function route() {
  // A fresh root: loops and timers of a previous rendering see theirs detached and stop.
  const old = document.getElementById("app");
  const root = old.cloneNode(false);
  old.replaceWith(root);
  const match = window.location.pathname.match(/^\/ui\/jobs\/([^/]+)\/?$/);
  try {
    if (match) {
      const params = new URLSearchParams(window.location.search);
      await renderJobPage(root, decodeURIComponent(match[1]), params.get("compare"));
    } else {
      await renderJobList(root);
    }
  } catch (err) {
    // Whatever failed, the user sees why instead of a blank page.
    root.append(el("p", { class: "error" }, `The page could not be shown: ${err.message}`));
    showBanner(err.message);
  }
}

window.addEventListener("error", (event) => showBanner(`Script error: ${event.message}`));
window.addEventListener("unhandledrejection", (event) => {
  showBanner(`Error: ${event.reason?.message ?? event.reason}`);
});

async function start() {
  try {
    await loadSettings();
  } catch (err) {
    const message = `The service settings could not be read: ${err.message}`;
    document.getElementById("app").replaceChildren(el("p", { class: "error" }, message));
    showBanner(message);
    return;
  }
  setupChrome();
  await route();
}

start();
