// The copyable ways to call a model: curl and Python, filled with the example input and the key.

export const KEY_PLACEHOLDER = "YOUR_ACCESS_KEY";

function shellQuote(text) {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

function pyLiteral(value, indent = 0) {
  const pad = "    ".repeat(indent + 1);
  const end = "    ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "None";
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    const flat = `[${value.map((v) => pyLiteral(v, indent + 1)).join(", ")}]`;
    if (flat.length <= 72) return flat;
    return `[\n${value.map((v) => pad + pyLiteral(v, indent + 1)).join(",\n")},\n${end}]`;
  }
  const entries = Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pyLiteral(v, indent + 1)}`);
  const flat = `{${entries.join(", ")}}`;
  if (flat.length <= 72) return flat;
  return `{\n${entries.map((e) => pad + e).join(",\n")},\n${end}}`;
}

export function curlSnippet({ url, body, auth, key }) {
  const lines = [`curl -s ${url}`];
  if (auth) lines.push(`  -H 'Authorization: Bearer ${key || KEY_PLACEHOLDER}'`);
  lines.push(`  -H 'Content-Type: application/json'`);
  lines.push(`  -d ${shellQuote(JSON.stringify(body ?? {}))}`);
  return lines.join(" \\\n");
}

export function pythonSnippet({ url, body, auth, key }) {
  const lines = ["import requests", "", "response = requests.post(", `    ${JSON.stringify(url)},`];
  lines.push(`    json=${pyLiteral(body ?? {}, 1)},`);
  if (auth) lines.push(`    headers={"Authorization": "Bearer ${key || KEY_PLACEHOLDER}"},`);
  lines.push("    timeout=30,", ")", "response.raise_for_status()", "print(response.json())");
  return lines.join("\n");
}
