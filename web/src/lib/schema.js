// A model's input schema (msgspec's JSON Schema) as form fields, and form values back to a request body.

function deref(schema, root) {
  let s = schema || {};
  for (let i = 0; i < 10 && s.$ref && s.$ref.startsWith("#/$defs/"); i++) {
    s = (root.$defs || {})[s.$ref.slice(8)] || {};
  }
  return s;
}

/** A short human name for a schema's type: "number", "list[number]", "string | null", "object". */
export function typeName(schema, root = schema) {
  const s = deref(schema, root);
  if (s.$ref) return s.$ref.split("/").pop();
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (s.anyOf || s.oneOf) return (s.anyOf || s.oneOf).map((x) => typeName(x, root)).join(" | ");
  if (Array.isArray(s.type)) return s.type.join(" | ");
  if (s.type === "array") return s.items ? `list[${typeName(s.items, root)}]` : "list";
  if (s.type === "object" && s.title) return s.title;
  if (s.title && !s.type) return s.title;
  return s.type || "any";
}

/** The kind of input a field gets: number, integer, string, boolean, enum, or json (anything else). */
function kindOf(schema, root) {
  let s = deref(schema, root);
  let nullable = false;
  const options = s.anyOf || s.oneOf;
  if (options) {
    const rest = options.filter((o) => deref(o, root).type !== "null");
    nullable = rest.length < options.length;
    if (rest.length !== 1) return { kind: "json", nullable };
    s = deref(rest[0], root);
  }
  if (Array.isArray(s.enum) && s.enum.every((v) => typeof v === "string"))
    return { kind: "enum", nullable, values: s.enum };
  if (["number", "integer", "string", "boolean"].includes(s.type)) return { kind: s.type, nullable };
  return { kind: "json", nullable };
}

/** The fields of an object schema, or null when it has none to show (a dict-style function). */
export function fieldsOf(schema) {
  if (!schema) return null;
  const s = deref(schema, schema);
  const props = s.properties;
  if (!props || !Object.keys(props).length) return null;
  const required = new Set(s.required || []);
  return Object.entries(props).map(([name, prop]) => {
    const p = deref(prop, schema);
    const { kind, nullable, values } = kindOf(prop, schema);
    return {
      name,
      kind,
      nullable,
      values: values || null,
      required: required.has(name),
      hasDefault: "default" in p || "default" in prop,
      default: "default" in prop ? prop.default : p.default,
      description: p.description || prop.description || "",
      type: typeName(prop, schema),
    };
  });
}

/** Form values (strings for inputs, booleans for checkboxes) from a request body. */
export function toValues(fields, body) {
  const values = {};
  const source = body && typeof body === "object" && !Array.isArray(body) ? body : {};
  for (const f of fields) {
    const has = f.name in source;
    const v = has ? source[f.name] : f.hasDefault ? f.default : undefined;
    if (f.kind === "boolean") values[f.name] = Boolean(v);
    else if (v === undefined || (v === null && !has)) values[f.name] = "";
    else if (f.kind === "json") values[f.name] = JSON.stringify(v);
    else if (v === null) values[f.name] = "null";
    else values[f.name] = String(v);
  }
  return values;
}

/**
 * A request body from form values: {body, errors} where errors maps a field to what is wrong.
 * An empty optional field is left out so the function's default applies.
 */
export function fromValues(fields, values) {
  const body = {};
  const errors = {};
  for (const f of fields) {
    const raw = values[f.name];
    if (f.kind === "boolean") {
      body[f.name] = Boolean(raw);
      continue;
    }
    const text = String(raw ?? "").trim();
    if (text === "") {
      if (f.required) errors[f.name] = "Required.";
      continue;
    }
    if (f.nullable && text === "null") {
      body[f.name] = null;
      continue;
    }
    if (f.kind === "number" || f.kind === "integer") {
      const n = Number(text);
      if (!Number.isFinite(n)) errors[f.name] = "Not a number.";
      else if (f.kind === "integer" && !Number.isInteger(n)) errors[f.name] = "Not a whole number.";
      else body[f.name] = n;
    } else if (f.kind === "json") {
      try {
        body[f.name] = JSON.parse(text);
      } catch (e) {
        errors[f.name] = `Not valid JSON: ${e.message}`;
      }
    } else {
      body[f.name] = raw;
    }
  }
  return { body, errors };
}
