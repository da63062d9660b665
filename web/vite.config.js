// Builds the SPA into the Python package (server/modelport/static), so `pip install` needs no Node.
// Output names are content hashes: building the same source twice gives the same files.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";

const outDir = fileURLToPath(new URL("../server/modelport/static", import.meta.url));

export default defineConfig({
  plugins: [svelte()],
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
