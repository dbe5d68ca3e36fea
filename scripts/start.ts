/**
 * `npm start`: the server on a small model, on CPU. On first run it writes a
 * Qwen3-shaped model with random weights to .cache/demo-model (no weights can be
 * downloaded here), then runs `tokamak serve` on it. Extra arguments go to
 * `tokamak serve` (e.g. `npm start -- --port 9000 --api-key secret`).
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { constants } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { DEMO_MODEL } from "../bench/models.js";
import { tinyModelParameters, writeTinyModel } from "../test/helpers/tiny-model.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const modelDir = process.env.TOKAMAK_DEMO_MODEL ?? join(root, ".cache", "demo-model");

if (!existsSync(join(modelDir, "config.json"))) {
  const millions = (tinyModelParameters(DEMO_MODEL) / 1e6).toFixed(1);
  process.stderr.write(`writing a demo model with RANDOM weights (${millions}M parameters, Qwen3 shape) to ${modelDir}\n`);
  writeTinyModel(modelDir, DEMO_MODEL);
}
process.stderr.write(
  "the demo model's weights are RANDOM: its text is gibberish by design; use it to try the API, the metrics and the figures.\n" +
    "serve a real model with: npx tokamak serve /path/to/hf-model-folder\n" +
    `try: curl http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' -d '{"model": "tokamak-demo", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}'\n`,
);
const cli = join(root, "dist", "src", "cli", "main.js");
const args = ["serve", modelDir, "--served-model-name", "tokamak-demo", "--kv-cache-memory", "1GiB", ...process.argv.slice(2)];
// The IPC channel lets the server see this script go, even by SIGKILL; signals are passed on.
const child = spawn(process.execPath, [cli, ...args], { stdio: ["inherit", "inherit", "inherit", "ipc"] });
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(sig, () => child.kill(sig));
child.on("exit", (code, signal) => process.exit(code ?? 128 + (signal ? constants.signals[signal] : 0)));
// When our own parent (npm) dies we are re-parented: stop the server rather than leave it running.
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) child.kill("SIGTERM");
}, 500).unref();
