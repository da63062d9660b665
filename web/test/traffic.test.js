// The promotion view's logic (src/lib/traffic.js) on answers shaped as the API gives them.
import { describe, expect, test } from "vitest";
import {
  between,
  buildSeries,
  diffsByRequest,
  guardTrip,
  ms,
  parsePercent,
  percent,
  rate,
  side,
  splitChange,
  splitOf,
  verdict,
} from "../src/lib/traffic.js";

const CANARY = {
  deployment: 3,
  build: 6,
  candidate: 4,
  candidate_build: 7,
  candidate_status: "serving",
  traffic: { mode: "split", candidate_percent: 10, sticky_header: null },
  guard: null,
  window_s: 60,
  builds: [],
  shadow: {},
};

describe("splitOf", () => {
  test("no candidate: no split", () => {
    expect(splitOf(null)).toBeNull();
    expect(splitOf({ deployment: 3, build: 6, candidate: null, traffic: null })).toBeNull();
  });

  test("a canary's two shares add up to 100", () => {
    const s = splitOf(CANARY);
    expect(s.mode).toBe("split");
    expect(s.segments.map((g) => [g.build, g.role, g.percent])).toEqual([
      [6, "primary", 90],
      [7, "candidate", 10],
    ]);
    expect(s.label).toBe("#6 90 % · #7 10 %");
    expect(s.status).toBe("serving");
    expect(s.sticky).toBeNull();
  });

  test("a sticky canary names its header; a 0 % candidate draws no segment", () => {
    const s = splitOf({ ...CANARY, traffic: { mode: "split", candidate_percent: 0, sticky_header: "X-User-Id" } });
    expect(s.sticky).toBe("X-User-Id");
    expect(s.segments.map((g) => g.build)).toEqual([6]);
    expect(s.label).toBe("#6 100 % · #7 0 %");
  });

  test("a shadow: the primary answers all, the candidate gets a copy", () => {
    const s = splitOf({ ...CANARY, traffic: { mode: "shadow", candidate_percent: 100, sticky_header: null } });
    expect(s.mode).toBe("shadow");
    expect(s.primary.percent).toBe(100);
    expect(s.candidate.percent).toBe(100);
    expect(s.segments.map((g) => g.build)).toEqual([6]);
    expect(s.label).toBe("#6 100 % · shadow #7 gets a copy of 100 %");
  });

  test("a deployment's own shape (candidate {id, build, status}) reads the same", () => {
    const s = splitOf({
      id: 3,
      build: 6,
      candidate: { id: 4, build: 7, status: "candidate" },
      traffic: CANARY.traffic,
    });
    expect(s.candidate.build).toBe(7);
    expect(s.status).toBe("candidate");
  });

  test("what a split change will do, in words", () => {
    expect(splitChange(splitOf(CANARY), 50)).toBe(
      "Build #6 will answer 50 % and build #7 50 % of the requests (now 90 % · 10 %).",
    );
    const shadow = splitOf({ ...CANARY, traffic: { mode: "shadow", candidate_percent: 100 } });
    expect(splitChange(shadow, 20)).toContain("a copy of 20 %");
  });
});

describe("numbers", () => {
  test("percent, ms and error rates", () => {
    expect(percent(12.5)).toBe("12.5 %");
    expect(percent(100 / 3)).toBe("33.33 %");
    expect(percent(null)).toBe("—");
    expect(ms(1.234)).toBe("1.23 ms");
    expect(ms(12.34)).toBe("12.3 ms");
    expect(ms(250.4)).toBe("250 ms");
    expect(ms(null)).toBe("—");
    expect(rate(0.015)).toBe("1.5 %");
  });

  test("a typed percent", () => {
    expect(parsePercent("25")).toEqual({ value: 25 });
    expect(parsePercent(" 0 ")).toEqual({ value: 0 });
    expect(parsePercent("101").problem).toBe("Between 0 and 100.");
    expect(parsePercent("-1").problem).toBe("Between 0 and 100.");
    expect(parsePercent("ten").problem).toBe("Not a number.");
    expect(parsePercent("").problem).toContain("between 0 and 100");
  });
});

describe("buildSeries", () => {
  const now = 1_000_000;
  const at = (s) => new Date(s * 1000).toISOString();
  const series = {
    step_s: 60,
    points: [
      { t: at(now - 120), build: 6, requests: 120, errors: 1, p50_ms: 2, p99_ms: 9 },
      { t: at(now - 60), build: 7, requests: 60, errors: 0, p50_ms: 3, p99_ms: 4 },
      { t: at(now - 60), build: 6, requests: 60, errors: 0, p50_ms: 2.5, p99_ms: 8 },
    ],
  };

  test("one build's points only, a slot per step", () => {
    const six = buildSeries(series, 6, 900, 60, now);
    const [times, perSecond] = six.rate;
    expect(times.length).toBe(16);
    expect(perSecond.filter((v) => v > 0)).toEqual([2, 1]);
    expect(six.errors[1].reduce((a, b) => a + b)).toBe(1);
    expect(six.latency[1].filter((v) => v != null)).toEqual([2, 2.5]);
    const seven = buildSeries(series, 7, 900, 60, now);
    expect(seven.rate[1].filter((v) => v > 0)).toEqual([1]);
  });

  test("a build with no request in the window has no chart", () => {
    expect(buildSeries(series, 8, 900, 60, now)).toBeNull();
    expect(buildSeries({ step_s: 60, points: [] }, 6, 900, 60, now)).toBeNull();
    expect(buildSeries(null, 6, 900, 60, now)).toBeNull();
  });
});

describe("replay reports", () => {
  const report = (over) => ({ id: 1, status: "done", replayed: 10, equal: 10, different: 0, errors_to: 0, ...over });

  test("the verdict", () => {
    expect(verdict(report())).toBe("equal");
    expect(verdict(report({ different: 2, equal: 8 }))).toBe("different");
    expect(verdict(report({ replayed: 0, equal: 0 }))).toBe("empty");
    expect(verdict(report({ status: "running" }))).toBe("running");
    expect(verdict(report({ status: "failed" }))).toBe("failed");
    expect(verdict(null)).toBeNull();
  });

  test("diffs grouped by request, in order", () => {
    const diffs = [
      { request_id: "a", path: "$.y", old: 1, new: 2, kind: "changed" },
      { request_id: "b", path: "$", old: 3, new: 4, kind: "changed" },
      { request_id: "a", path: "$.z", old: null, new: 5, kind: "added" },
    ];
    const groups = diffsByRequest(diffs);
    expect(groups.map((g) => [g.request_id, g.diffs.map((d) => d.path)])).toEqual([
      ["a", ["$.y", "$.z"]],
      ["b", ["$"]],
    ]);
    expect(diffsByRequest(undefined)).toEqual([]);
  });

  test("each side of a diff as text", () => {
    expect(side({ kind: "changed", old: { a: 1 }, new: "x" }, "old")).toBe('{"a":1}');
    expect(side({ kind: "changed", old: { a: 1 }, new: "x" }, "new")).toBe('"x"');
    expect(side({ kind: "added", old: null, new: 5 }, "old")).toBe("(absent)");
    expect(side({ kind: "removed", old: 5, new: null }, "new")).toBe("(absent)");
    expect(side({ kind: "changed", old: null, new: 0 }, "old")).toBe("null");
  });

  test("reports between two builds, either way, newest first", () => {
    const all = [
      { id: 1, from_build: 6, to_build: 7 },
      { id: 2, from_build: 6, to_build: 8 },
      { id: 3, from_build: 7, to_build: 6 },
    ];
    expect(between(all, 6, 7).map((r) => r.id)).toEqual([3, 1]);
    expect(between(all, 7, 8)).toEqual([]);
  });
});

describe("guardTrip", () => {
  const tripped = {
    kind: "guard.tripped",
    at: "2026-12-03T13:00:05Z",
    actor: null,
    detail: { build: 7, from: 10, why: "error rate 1 over 6 requests broke max_error_rate 0.05", candidate_percent: 0 },
  };
  const added = { kind: "candidate.added", at: "2026-12-03T13:00:00Z", detail: {} };
  const atZero = { ...CANARY, traffic: { ...CANARY.traffic, candidate_percent: 0 } };

  test("the trip's reason, time and former share while the candidate stays at 0 %", () => {
    expect(guardTrip({ events: [added, tripped] }, atZero)).toEqual({
      why: "error rate 1 over 6 requests broke max_error_rate 0.05",
      at: "2026-12-03T13:00:05Z",
      from: 10,
    });
  });

  test("nothing once the split moved again, or without a trip", () => {
    const moved = { kind: "traffic", at: "2026-12-03T13:01:00Z", detail: { candidate_percent: 0 } };
    expect(guardTrip({ events: [added, tripped, moved] }, atZero)).toBeNull();
    expect(guardTrip({ events: [added, tripped] }, CANARY)).toBeNull(); // back above 0 %
    expect(guardTrip({ events: [added] }, atZero)).toBeNull();
    expect(guardTrip(null, atZero)).toBeNull();
    expect(guardTrip({ events: [tripped] }, null)).toBeNull();
    const shadow = { ...atZero, traffic: { mode: "shadow", candidate_percent: 0 } };
    expect(guardTrip({ events: [tripped] }, shadow)).toBeNull();
  });
});
