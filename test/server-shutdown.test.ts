/**
 * Shutdown as an operator sees it, through the real CLI and real signals:
 * SIGTERM drains (new requests 503, short streams finish, long ones end with
 * a final error event and [DONE]) and the process exits 0 by the timeout;
 * `npm start`'s launcher never leaves a server behind when it goes.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { writeTinyModel } from "./helpers/tiny-model.js";

const cli = fileURLToPath(new URL("../src/cli/main.js", import.meta.url));
const startScript = fileURLToPath(new URL("../scripts/start.js", import.meta.url));
const root = mkdtempSync(join(tmpdir(), "tokamak-shutdown-"));
const modelDir = join(root, "tiny-llama");
const children: ChildProcess[] = [];

before(() => writeTinyModel(modelDir, { arch: "llama", dtype: "bf16", vocabSize: 4096, maxPositionEmbeddings: 16384, seed: 4 }));
after(() => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  rmSync(root, { recursive: true, force: true });
});

/** Start a process and wait for the server URL it prints. */
function launch(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ child: ChildProcess; url: string; log: () => string }> {
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let log = "";
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer) => {
      log += d.toString();
      const m = /OpenAI-compatible API at (http:\/\/[^\s/]+)\/v1/.exec(log);
      if (m) resolve({ child, url: m[1]!, log: () => log });
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.on("exit", (code) => reject(new Error(`exited with ${code} before serving:\n${log}`)));
  });
}

const exited = (child: ChildProcess) =>
  new Promise<number | null>((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else child.on("exit", (code) => resolve(code));
  });

/** True once nothing answers on the URL any more. */
async function goneWithin(url: string, tries: number): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    try {
      await fetch(`${url}/health`);
    } catch {
      return true;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

describe("SIGTERM", () => {
  it(
    "drains: new requests 503, short streams finish, the rest end with an error event and [DONE]; exit 0 by the timeout",
    { timeout: 120_000 },
    async () => {
      const timeoutS = 3;
      const { child, url, log } = await launch(process.execPath, [
        cli,
        "serve",
        modelDir,
        "--port",
        "0",
        "--threads",
        "1",
        "--max-model-len",
        "16384",
        "--kv-cache-memory",
        "512MiB",
        "--max-num-seqs",
        "32",
        "--shutdown-timeout",
        String(timeoutS),
      ]);
      const stream = async (maxTokens: number, i: number) => {
        const res = await fetch(`${url}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: [100 + i, 7], max_tokens: maxTokens, ignore_eos: true, stream: true }),
        });
        assert.equal(res.status, 200);
        const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
        let text = "";
        let first: () => void = () => undefined;
        const started = new Promise<void>((r) => (first = r));
        const done = (async () => {
          for (;;) {
            const { value, done: end } = await reader.read();
            if (end) return text;
            text += value;
            if (text.includes("data: ")) first();
          }
        })();
        await started;
        return { done }; // wrapped: an async function returning the promise itself would wait for it
      };
      const long = await Promise.all(Array.from({ length: 20 }, (_, i) => stream(16000, i)));
      const short = await stream(40, 99); // finishes before or during the drain, never cut
      const t0 = Date.now();
      child.kill("SIGTERM");
      await new Promise((r) => setTimeout(r, 200));
      const late = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: [5], max_tokens: 1 }),
      });
      assert.equal(late.status, 503, "new requests during the drain get 503");
      assert.match(await late.text(), /shutting down/);
      assert.equal((await fetch(`${url}/health`)).status, 503, "load balancers see the drain on /health");

      const bodies = await Promise.all(long.map((s) => s.done));
      const shortBody = await short.done;
      const code = await exited(child);
      const elapsed = (Date.now() - t0) / 1000;
      assert.equal(code, 0, log());
      // The drain lasts the timeout at most; 3 s of slack for a loaded machine, not the 30+ s it took before.
      assert.ok(elapsed < timeoutS + 3, `exited ${elapsed.toFixed(1)} s after SIGTERM with --shutdown-timeout ${timeoutS}`);
      assert.match(shortBody, /"finish_reason":"length"[\s\S]*data: \[DONE\]\n\n$/, "a short stream finishes normally");
      for (const b of bodies) {
        assert.match(b, /data: \{"error":\{"message":"the server shut down before the request finished[^"]*","type":"service_unavailable"/);
        assert.ok(b.endsWith("data: [DONE]\n\n"), `every stream ends with [DONE]: ...${b.slice(-120)}`);
      }
      assert.match(log(), /timed out: ended 20 requests with an error; bye/);
    },
  );
});

describe("npm start's launcher", () => {
  const env = { TOKAMAK_DEMO_MODEL: modelDir };
  const args = [startScript, "--port", "0", "--threads", "1", "--max-model-len", "256"];

  it("killed outright (SIGKILL), it takes its server with it", { timeout: 60_000 }, async () => {
    const { child, url } = await launch(process.execPath, args, env);
    child.kill("SIGKILL");
    assert.ok(await goneWithin(url, 100), "the server kept running after its launcher was killed");
  });

  it("when the launcher's own parent dies, the launcher stops the server and exits", { timeout: 60_000 }, async () => {
    // A shell stands in for npm: kill it, and the launcher is left re-parented.
    const { child, url } = await launch("/bin/sh", ["-c", `"${process.execPath}" ${args.map((a) => `"${a}"`).join(" ")} & wait`], env);
    child.kill("SIGKILL");
    assert.ok(await goneWithin(url, 100), "the server kept running after npm went away");
  });

  it("SIGTERM to the launcher is passed on and it exits with the server's status", { timeout: 60_000 }, async () => {
    const { child, url } = await launch(process.execPath, args, env);
    child.kill("SIGTERM");
    assert.equal(await exited(child), 0);
    assert.ok(await goneWithin(url, 50));
  });
});
