// A tiny static server for dist/ (node's http module, nothing else):
//   node serve.mjs [--port 5173] [--host 127.0.0.1]
// The browser test imports `serve` to serve the page on a port of its choice.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { dirname, extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".map": "application/json",
  ".css": "text/css; charset=utf-8",
};

/** Serves `root` on host:port; resolves with the listening server. */
export function serve({ port = 5173, host = "127.0.0.1", root = join(here, "dist") } = {}) {
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    const rel = normalize(path === "/" ? "/index.html" : path);
    const file = join(root, rel);
    if (!file.startsWith(root + sep) || (req.method !== "GET" && req.method !== "HEAD")) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, {
        "content-type": TYPES[extname(file)] ?? "application/octet-stream",
        "cache-control": "no-store",
      });
      res.end(req.method === "HEAD" ? undefined : body);
    } catch {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
    }
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve(server));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : dflt;
  };
  const port = Number(arg("--port", process.env.PORT ?? 5173));
  const host = arg("--host", "127.0.0.1");
  await serve({ port, host });
  const origin = `http://${host}:${port}`;
  console.log(`serving ${join(here, "dist")} on ${origin}`);
  console.log(`open ${origin}/?server=http://127.0.0.1:50051&session=game-42`);
  console.log(`(the server needs SYNCKAIROS_CORS_ORIGINS=${origin})`);
}
