// What the signed-in token may do, from its role (GET /api/v1/whoami): admin, deployer, viewer.

/** May this role change what serves (deploy, scale, canary, promote, replay…)? */
export function canWrite(role) {
  return role === "admin" || role === "deployer";
}

/** The role to keep for the tab from a whoami answer ("" when it is not one we know). */
export function roleOf(whoami) {
  const role = whoami && typeof whoami.role === "string" ? whoami.role : "";
  return ["admin", "deployer", "viewer", "predict"].includes(role) ? role : "";
}
