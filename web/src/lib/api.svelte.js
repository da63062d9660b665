// The REST client: one `api()` for every call, errors as ApiError with the server's words.
// The token lives in sessionStorage only (this tab, until it closes or "Sign out").

import { roleOf } from "./roles.js";

const KEY = "modelport.token";
const ROLE = "modelport.role";

export const session = $state({
  token: sessionStorage.getItem(KEY) || "",
  role: sessionStorage.getItem(ROLE) || "", // the token's role (GET /api/v1/whoami); "" unknown
  notice: "", // why the user was signed out
});

export class ApiError extends Error {
  constructor(status, code, message, field = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

const STATUS_WORDS = {
  0: "The server could not be reached",
  200: "OK",
  201: "Created",
  202: "Accepted",
  400: "The request was not understood",
  401: "Not signed in",
  403: "Not allowed",
  404: "Not found",
  405: "Not allowed here",
  409: "Conflict",
  413: "Too large",
  422: "Invalid input",
  429: "Busy: try again shortly",
  500: "The server hit an error",
  502: "Bad gateway",
  503: "Unavailable",
  504: "Timed out",
};

export function statusWords(status) {
  return STATUS_WORDS[status] || `HTTP ${status}`;
}

/** Turn any failed response into an ApiError carrying the server's {"error": {...}} words. */
export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON */
  }
  const err = body && body.error;
  if (err && typeof err === "object") {
    return new ApiError(
      response.status,
      err.code || "",
      err.message || statusWords(response.status),
      err.field || null,
    );
  }
  return new ApiError(response.status, "", `${statusWords(response.status)} (HTTP ${response.status}).`);
}

export function signIn(token, role) {
  session.token = token;
  session.role = role;
  session.notice = "";
  sessionStorage.setItem(KEY, token);
  sessionStorage.setItem(ROLE, role);
}

/** Ask the server for the token's role when the tab does not know it (a tab signed in before). */
export async function learnRole() {
  if (!session.token || session.role) return;
  try {
    const role = roleOf(await api("/api/v1/whoami"));
    if (role && session.token) {
      session.role = role;
      sessionStorage.setItem(ROLE, role);
    }
  } catch {
    /* the pages say what went wrong; an unknown role shows no write buttons */
  }
}

export function signOut(notice = "") {
  session.token = "";
  session.role = "";
  session.notice = notice;
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ROLE);
}

/**
 * fetch() with the session's token. Returns parsed JSON (or the Response when `raw`).
 * Throws ApiError; a 401 signs the tab out (the token died), unless `token` was passed explicitly.
 */
export async function api(path, { method = "GET", body, raw = false, token, signal, headers = {} } = {}) {
  const hdrs = { Accept: "application/json", ...headers };
  const bearer = token ?? session.token;
  if (bearer) hdrs.Authorization = `Bearer ${bearer}`;
  let payload;
  if (body !== undefined) {
    hdrs["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers: hdrs, body: payload, signal, cache: "no-store" });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network", `The server could not be reached (${e.message}). Is \`modelport serve\` running?`);
  }
  if (!response.ok) {
    const err = await errorFrom(response);
    if (response.status === 401 && token === undefined && session.token) {
      signOut(`Signed out: ${err.message}`);
    }
    throw err;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const enc = encodeURIComponent;

/** Every item of a paged list, following `next` up to `max` items. */
export async function all(path, max = 1000) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(cursor ? `${path}${sep}cursor=${enc(cursor)}` : path);
    items.push(...page.items);
    cursor = page.next;
  } while (cursor && items.length < max);
  return items;
}

/** Read a streamed text response chunk by chunk (build logs with ?follow=1). */
export async function streamText(path, onChunk, signal) {
  const response = await api(path, { raw: true, signal, headers: { Accept: "text/plain" } });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    onChunk(decoder.decode(value, { stream: true }));
  }
  onChunk(decoder.decode());
}
