// Builds the SPA into the Python package (server/modelport/static), so `pip install` needs no Node.
// Output names are content hashes: building the same source twice gives the same files.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";

const outDir = fileURLToPath(new URL("../server/modelport/static", import.meta.url));

// The API docs page (/schema, Swagger UI) loads its script and styles from the server itself, so
// it works offline: the pinned swagger-ui-dist files go into assets/ under their version's name
// (the server finds them there; a new version is a new name, so caching them for good is safe).
function swaggerUiOffline() {
  const dir = fileURLToPath(new URL("node_modules/swagger-ui-dist/", import.meta.url));
  const { version } = JSON.parse(readFileSync(`${dir}package.json`, "utf8"));
  const files = {
    "bundle.js": "swagger-ui-bundle.js",
    "preset.js": "swagger-ui-standalone-preset.js",
    "ui.css": "swagger-ui.css",
  };
  return {
    name: "swagger-ui-offline",
    generateBundle() {
      for (const [suffix, file] of Object.entries(files)) {
        const source = readFileSync(`${dir}${file}`, "utf8").replace(/\n\/[*/]# sourceMappingURL=\S+\s*$/, "\n");
        this.emitFile({ type: "asset", fileName: `assets/swagger-ui-${version}-${suffix}`, source });
      }
    },
  };
}

export default defineConfig({
  plugins: [svelte(), swaggerUiOffline()],
  base: "/",
  build: {
    outDir,
    emptyOutDir: true,
    assetsDir: "assets",
    target: "es2022",
    sourcemap: false,
    reportCompressedSize: true,
    modulePreload: { polyfill: false },
    chunkSizeWarningLimit: 200,
  },
  server: {
    // `npm run dev` against a running `modelport serve --port 8000`
    proxy: {
      "/api": "http://127.0.0.1:8000",
      "/models/": { target: "http://127.0.0.1:8000", bypass: (req) => (req.method === "POST" ? undefined : req.url) },
    },
  },
});
