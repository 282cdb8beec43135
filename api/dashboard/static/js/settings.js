// What the service says about itself (GET /settings): default and allowed bit-widths, job
// statuses, request defaults, and whether requests need the API token. The dashboard reads
// these facts from the server instead of repeating them.

import { api } from "./api.js";

let loaded = null;

/** Fetches the settings once per page; later calls get the same answer. */
export async function loadSettings() {
  if (!loaded) loaded = await api("/settings");
  return loaded;
}

/** The settings `loadSettings` fetched (the entry point loads them before any page). */
export function settings() {
  if (!loaded) throw new Error("the service settings are not loaded yet");
  return loaded;
}

/** Whether a job in `status` is still queued or running, i.e. may still change. */
export function isActive(status) {
  return settings().active_statuses.includes(status);
}
