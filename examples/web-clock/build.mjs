// `npm run build` (after `buf generate` and `tsc --noEmit`): bundles
// src/main.ts into dist/main.js with esbuild and copies index.html beside it.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
await mkdir(dist, { recursive: true });
await build({
  entryPoints: [join(here, "src/main.ts")],
  outfile: join(dist, "main.js"),
  bundle: true,
  format: "esm",
  target: "es2022",
  sourcemap: true,
  minify: true,
  logLevel: "warning",
});
await copyFile(join(here, "index.html"), join(dist, "index.html"));
console.log(`built ${dist}`);
