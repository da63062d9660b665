// Which tokens see the buttons that change what serves (src/lib/roles.js).
import { describe, expect, test } from "vitest";
import { canWrite, roleOf } from "../src/lib/roles.js";

describe("canWrite", () => {
  test("deployer and admin may; viewer, predict and an unknown role may not", () => {
    expect(canWrite("admin")).toBe(true);
    expect(canWrite("deployer")).toBe(true);
    expect(canWrite("viewer")).toBe(false);
    expect(canWrite("predict")).toBe(false);
    expect(canWrite("")).toBe(false);
    expect(canWrite(undefined)).toBe(false);
  });
});

describe("roleOf", () => {
  test("the whoami answer's role, or empty for anything else", () => {
    expect(roleOf({ id: "t1", name: "ci", role: "deployer", models: [], expires_at: null })).toBe("deployer");
    expect(roleOf({ role: "viewer" })).toBe("viewer");
    expect(roleOf({ role: "root" })).toBe("");
    expect(roleOf({})).toBe("");
    expect(roleOf(null)).toBe("");
  });
});
