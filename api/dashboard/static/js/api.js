// The JSON API of the job service: fetch with the saved token, errors as ApiError.

const TOKEN_KEY = "allocator.apiToken";
// Set when a read was refused for want of a token (ALLOCATOR_READ_REQUIRES_TOKEN=1): saving
// a token then reloads the page's data.
export const state = { readRefused: false };

export class ApiError extends Error {
  /** An HTTP error answered by the service ({detail, field, value}) or a network failure. */
  constructor(status, detail, field = null, value = null) {
    super(detail);
    this.status = status;
    this.field = field;
    this.value = value;
  }
}

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled (private mode): the token lives for this page only.
  }
}

function messageOf(status, body, path) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  }
  if (status === 401) return "this server needs an API token for this request";
  return `${path} answered HTTP ${status}`;
}

/** Calls the API; returns the parsed JSON body, throws ApiError otherwise. */
export async function api(path, { method = "GET", body = undefined } = {}) {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `cannot reach the service (${method} ${path}): ${err.message}`);
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    let detail = messageOf(response.status, data, path);
    if (response.status === 401) {
      if (method === "GET") state.readRefused = true;
      detail += token ? " (the saved API token was refused)"
        : " (enter the API token at the top right; without it the dashboard is read-only)";
    }
    throw new ApiError(response.status, detail, data?.field ?? null, data?.value ?? null);
  }
  if (data === null && text) {
    throw new ApiError(response.status, `${path} did not answer JSON`);
  }
  return data;
}
