// Safe promotion on screen: the split of a model's traffic between its primary and candidate
// builds, the per-build series of the metrics, and the replay reports' diffs. Pure functions
// (no fetch, no state): the pages feed them the API's answers (docs/api.md, "Several builds").

/** "10 %", "12.5 %", "33.33 %": a share as people read it. */
export function percent(p) {
  if (p == null || !Number.isFinite(Number(p))) return "—";
  const n = Math.round(Number(p) * 100) / 100;
  return `${n} %`;
}

/** A percent typed in a form: {value} when it is a number in 0–100, else {problem} in words. */
export function parsePercent(text) {
  const s = String(text ?? "").trim();
  if (!s) return { problem: "A percent between 0 and 100." };
  const n = Number(s);
  if (!Number.isFinite(n)) return { problem: "Not a number." };
  if (n < 0 || n > 100) return { problem: "Between 0 and 100." };
  return { value: n };
}

/**
 * The split of GET …/deployments/current/traffic (or of a deployment with `candidate` and
 * `traffic`): null without a candidate; else {mode, sticky, status, primary: {build, percent},
 * candidate: {build, percent}, segments, label}. A split's segments add up to 100 (the share of
 * requests each build answers); a shadow's primary answers 100 % and the candidate gets a copy
 * of `candidate.percent` % of them (its segment is the copied share, drawn apart).
 */
export function splitOf(live) {
  if (!live) return null;
  const primaryBuild = live.build;
  const candidateBuild = live.candidate_build ?? live.candidate?.build ?? null;
  const traffic = live.traffic;
  if (candidateBuild == null || !traffic) return null;
  const p = Math.min(100, Math.max(0, Number(traffic.candidate_percent) || 0));
  const shadow = traffic.mode === "shadow";
  const primary = { build: primaryBuild, role: "primary", percent: shadow ? 100 : 100 - p };
  const candidate = { build: candidateBuild, role: "candidate", percent: p };
  const label = shadow
    ? `#${primaryBuild} ${percent(100)} · shadow #${candidateBuild} gets a copy of ${percent(p)}`
    : `#${primaryBuild} ${percent(100 - p)} · #${candidateBuild} ${percent(p)}`;
  return {
    mode: shadow ? "shadow" : "split",
    sticky: traffic.sticky_header || null,
    status: live.candidate_status || live.candidate?.status || null,
    primary,
    candidate,
    segments: shadow ? [primary] : [primary, candidate].filter((s) => s.percent > 0),
    label,
  };
}

/** What a split change will do, for its confirmation. */
export function splitChange(split, to) {
  if (!split) return "";
  if (split.mode === "shadow") {
    return `Build #${split.candidate.build} will get a copy of ${percent(to)} of the requests (now ${percent(split.candidate.percent)}); build #${split.primary.build} keeps answering them all.`;
  }
  return `Build #${split.primary.build} will answer ${percent(100 - to)} and build #${split.candidate.build} ${percent(to)} of the requests (now ${percent(split.primary.percent)} · ${percent(split.candidate.percent)}).`;
}

/** Milliseconds as "12.3 ms" (or "—"). */
export function ms(v) {
  if (v == null || !Number.isFinite(Number(v))) return "—";
  const n = Number(v);
  return `${n >= 100 ? Math.round(n) : +n.toFixed(n >= 10 ? 1 : 2)} ms`;
}

/** An error rate (0–1) as a percent. */
export function rate(r) {
  if (r == null || !Number.isFinite(Number(r))) return "—";
  return percent(Number(r) * 100);
}

/**
 * One build's series out of the metrics answer ({step_s, points: [{t, build, ...}]}), one slot
 * per step of the window ending at `nowS`: requests per second and errors (0 where nothing was
 * sent), p50 / p99 (gaps). Returns null when the build saw no request in the window.
 */
export function buildSeries(series, build, windowS, stepS, nowS) {
  const step = series?.step_s || stepS;
  const points = (series?.points || []).filter((p) => p.build === build);
  if (!points.length) return null;
  const first = Math.floor((nowS - windowS) / step) * step;
  const times = [];
  for (let t = first; t <= nowS; t += step) times.push(t);
  const perSecond = times.map(() => 0);
  const errors = times.map(() => 0);
  const p50 = times.map(() => null);
  const p99 = times.map(() => null);
  let requests = 0;
  for (const p of points) {
    const t = typeof p.t === "number" ? (p.t > 1e12 ? p.t / 1000 : p.t) : Date.parse(p.t) / 1000;
    const i = Math.round((t - first) / step);
    if (!Number.isFinite(t) || i < 0 || i >= times.length) continue;
    requests += p.requests || 0;
    perSecond[i] += (p.requests || 0) / step;
    errors[i] += p.errors || 0;
    p50[i] = p.p50_ms ?? null;
    p99[i] = p.p99_ms ?? null;
  }
  if (!requests) return null;
  return { step, rate: [times, perSecond], errors: [times, errors], latency: [times, p50, p99] };
}

/** A replay report's verdict: running | failed | empty (nothing replayed) | equal | different. */
export function verdict(report) {
  if (!report) return null;
  if (report.status === "running" || report.status === "queued") return "running";
  if (report.status === "failed") return "failed";
  if (!report.replayed) return "empty";
  return report.different > 0 ? "different" : "equal";
}

/** The diffs of a report grouped by request, in the report's order: [{request_id, diffs}]. */
export function diffsByRequest(diffs) {
  const groups = [];
  const seen = new Map();
  for (const d of diffs || []) {
    let g = seen.get(d.request_id);
    if (!g) {
      g = { request_id: d.request_id, diffs: [] };
      seen.set(d.request_id, g);
      groups.push(g);
    }
    g.diffs.push(d);
  }
  return groups;
}

/** One side of a diff as text: JSON, or "(absent)" for the side an added/removed key lacks. */
export function side(diff, which) {
  if ((diff.kind === "added" && which === "old") || (diff.kind === "removed" && which === "new")) return "(absent)";
  const v = diff[which];
  return v === undefined ? "(absent)" : JSON.stringify(v);
}

/** Reports between two builds (either way), newest first. */
export function between(reports, a, b) {
  return (reports || [])
    .filter((r) => (r.from_build === a && r.to_build === b) || (r.from_build === b && r.to_build === a))
    .sort((x, y) => y.id - x.id);
}

/**
 * The guard's last trip, while it still holds: the candidate deployment's latest change of share
 * is a `guard.tripped` event and the candidate is at 0 % now. `{why, at, from}` or null.
 */
export function guardTrip(candidate, live) {
  if (!candidate || !live || !live.traffic) return null;
  if (live.traffic.mode === "shadow" || Number(live.traffic.candidate_percent) !== 0) return null;
  const moves = (candidate.events || []).filter((e) => e.kind === "traffic" || e.kind === "guard.tripped");
  const last = moves.at(-1);
  if (!last || last.kind !== "guard.tripped") return null;
  const detail = last.detail || {};
  return { why: detail.why || "its guard broke", at: last.at, from: detail.from ?? null };
}
