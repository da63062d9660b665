// The metrics series (docs/api.md: {step_s, points: [{t, build, requests, errors, p50_ms, p95_ms, p99_ms}]}).
// `since` is sent as an ISO-8601 UTC time and `step` in seconds. A server without the route
// answers 404: callers get null and show an empty state instead of an error.
import { api, enc } from "./api.svelte.js";

export async function metrics(name, windowS, stepS) {
  const since = new Date(Date.now() - windowS * 1000).toISOString();
  try {
    return await api(`/api/v1/models/${enc(name)}/metrics?since=${enc(since)}&step=${stepS}`);
  } catch (e) {
    if (e.status === 404 && e.code !== "model.not_found") return null;
    if (e.status === 405) return null;
    throw e;
  }
}

export function pointTime(t) {
  if (typeof t === "number") return t > 1e12 ? t / 1000 : t;
  const ms = Date.parse(t);
  return Number.isNaN(ms) ? null : ms / 1000;
}

/** Requests and errors added up over a series. */
export function totals(series) {
  let requests = 0;
  let errors = 0;
  for (const p of series?.points || []) {
    requests += p.requests || 0;
    errors += p.errors || 0;
  }
  return { requests, errors };
}
