// `npm test`: bundles test/*.test.ts with esbuild (into a scratch folder)
// and runs them with node's test runner.
import { build } from "esbuild";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const files = (await readdir(here)).filter((f) => f.endsWith(".test.ts"));
const out = await mkdtemp(join(tmpdir(), "web-clock-unit-"));
try {
  await build({
    entryPoints: files.map((f) => join(here, f)),
    outdir: out,
    outExtension: { ".js": ".mjs" },
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    logLevel: "warning",
    absWorkingDir: join(here, ".."),
  });
  const built = files.map((f) => join(out, f.replace(/\.ts$/, ".mjs")));
  const r = spawnSync(process.execPath, ["--test", ...built], { stdio: "inherit", cwd: join(here, "..") });
  process.exitCode = r.status ?? 1;
} finally {
  await rm(out, { recursive: true, force: true });
}
