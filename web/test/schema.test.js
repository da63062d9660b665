// The Test pane's form logic (src/lib/schema.js) on schemas as modelport's runtime writes them.
import { describe, expect, test } from "vitest";
import { fieldsOf, fromValues, toValues, typeName } from "../src/lib/schema.js";

// analyze(def typed(a: float, n: int = 3, name: str = "x", flag: bool = False, tags: list[str] = [],
//                   maybe: float | None = None, kind: Literal["a", "b"] = "a")).input_schema
const TYPED = {
  title: "TypedInput",
  type: "object",
  additionalProperties: false,
  required: ["a"],
  properties: {
    a: { type: "number" },
    n: { type: "integer", default: 3 },
    name: { type: "string", default: "x" },
    flag: { type: "boolean", default: false },
    tags: { type: "array", items: { type: "string" }, default: [] },
    maybe: { anyOf: [{ type: "number" }, { type: "null" }], default: null },
    kind: { enum: ["a", "b"], default: "a" },
  },
};
// def nested(p: Point, when: str | None = None), Point a Struct
const NESTED = {
  title: "NestedInput",
  type: "object",
  required: ["p"],
  additionalProperties: false,
  properties: { p: { $ref: "#/$defs/Point" }, when: { anyOf: [{ type: "string" }, { type: "null" }], default: null } },
  $defs: {
    Point: {
      title: "Point",
      type: "object",
      required: ["x"],
      properties: { x: { type: "number" }, y: { type: "number", default: 0.0 } },
    },
  },
};

const byName = (fields) => Object.fromEntries(fields.map((f) => [f.name, f]));

describe("fieldsOf", () => {
  test("typed parameters become fields with their kind, default and requiredness", () => {
    const f = byName(fieldsOf(TYPED));
    expect(Object.keys(f)).toEqual(["a", "n", "name", "flag", "tags", "maybe", "kind"]);
    expect(f.a).toMatchObject({ kind: "number", required: true, hasDefault: false, type: "number" });
    expect(f.n).toMatchObject({ kind: "integer", required: false, default: 3 });
    expect(f.flag).toMatchObject({ kind: "boolean", default: false });
    expect(f.tags).toMatchObject({ kind: "json", type: "list[string]" });
    expect(f.maybe).toMatchObject({ kind: "number", nullable: true, type: "number | null" });
    expect(f.kind).toMatchObject({ kind: "enum", values: ["a", "b"] });
  });

  test("a field that is a Struct is JSON, named by its title through $ref", () => {
    const f = byName(fieldsOf(NESTED));
    expect(f.p).toMatchObject({ kind: "json", required: true, type: "Point" });
    expect(f.when).toMatchObject({ kind: "string", nullable: true });
  });

  test("a dict-style function (no properties) has no fields to show", () => {
    expect(fieldsOf({ type: "object" })).toBeNull();
    expect(fieldsOf(null)).toBeNull();
  });
});

describe("typeName", () => {
  test("names lists, unions, enums and untyped values", () => {
    expect(typeName({ type: "array", items: { type: "integer" } })).toBe("list[integer]");
    expect(typeName({ anyOf: [{ type: "string" }, { type: "null" }] })).toBe("string | null");
    expect(typeName({ enum: ["a", 1] })).toBe('"a" | 1');
    expect(typeName({})).toBe("any");
  });
});

describe("toValues and fromValues", () => {
  const fields = fieldsOf(TYPED);

  test("an example body fills the form and comes back as the same body", () => {
    const body = { a: 1.5, n: 4, name: "y", flag: true, tags: ["p", "q"], maybe: null, kind: "b" };
    const values = toValues(fields, body);
    expect(values).toMatchObject({ a: "1.5", n: "4", flag: true, tags: '["p","q"]', maybe: "null" });
    expect(fromValues(fields, values)).toEqual({ body, errors: {} });
  });

  test("defaults fill an empty form; empty optional fields are left out so defaults apply", () => {
    const values = toValues(fields, {});
    expect(values).toMatchObject({ a: "", n: "3", name: "x", maybe: "" });
    const { body, errors } = fromValues(fields, { ...values, a: "2", n: "", name: "" });
    expect(errors).toEqual({});
    expect(body).toEqual({ a: 2, flag: false, tags: [], kind: "a" });
  });

  test("each wrong value is named with what is wrong", () => {
    const { errors } = fromValues(fields, { a: "", n: "1.5", tags: "[1,", maybe: "x", flag: false });
    expect(errors.a).toBe("Required.");
    expect(errors.n).toBe("Not a whole number.");
    expect(errors.tags).toMatch(/^Not valid JSON/);
    expect(errors.maybe).toBe("Not a number.");
  });
});
