// Which colour a state gets, everywhere: ok (green), info (blue), warn (amber), bad (red), idle (grey).
const TONES = {
  deployed: "ok",
  built: "ok",
  ready: "ok",
  success: "ok",
  pending: "info",
  candidate: "info",
  deploying: "info",
  building: "info",
  starting: "info",
  queued: "idle",
  stopping: "warn",
  draining: "warn",
  replaced: "idle",
  failed: "bad",
  crashed: "bad",
  error: "bad",
  stopped: "idle",
  exited: "idle",
  "not deployed": "idle",
};

export function tone(status) {
  return TONES[status] || "idle";
}

export const SETTLED = new Set(["deployed", "failed", "stopped"]);
export const ACTIVE = new Set(["pending", "deploying", "deployed", "stopping"]);
