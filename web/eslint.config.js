// Lint for the web UI: JavaScript's and Svelte's recommended rules (npm run lint; scripts/test runs it).
import js from "@eslint/js";
import svelte from "eslint-plugin-svelte";
import globals from "globals";

export default [
  js.configs.recommended,
  ...svelte.configs["flat/recommended"],
  {
    languageOptions: { globals: { ...globals.browser }, ecmaVersion: 2022, sourceType: "module" },
    rules: {
      "no-unused-vars": ["error", { argsIgnorePattern: "^_", caughtErrors: "none" }],
      // The lists are drawn afresh from each API answer and hold no stateful children, so a key
      // would change nothing; and the Maps and URLSearchParams flagged are temporaries built
      // inside one computation, never reactive state.
      "svelte/require-each-key": "off",
      "svelte/prefer-svelte-reactivity": "off",
    },
  },
  { files: ["vite.config.js", "eslint.config.js"], languageOptions: { globals: { ...globals.node } } },
  { ignores: ["node_modules/", "../server/modelport/static/"] },
];
