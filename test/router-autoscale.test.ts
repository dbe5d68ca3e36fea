/**
 * `tokamak router --spawn ...`: the one-box autoscaler goes 1 → 3 replicas under load and back to 1
 * when idle (by the HPA's rules, with short windows), and every request of the run is answered.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { parsePrometheusSums } from "../src/router/replica.js";
import { startCli, ROUTER_TEST_MODEL } from "./helpers/processes.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const KEY = "autoscale-admin";

interface AdminView {
  replicas: { id: string; state: string; pid: number | null; spawned: boolean }[];
  autoscaler: { desired_replicas: number };
}

test("the autoscaler starts replicas when the waiting queue passes its target and drains them when idle; no request is lost", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "tokamak-autoscale-"));
  writeTinyModel(join(dir, "m"), ROUTER_TEST_MODEL);
  const spawn = `tokamak serve ${join(dir, "m")} --stub-model --stub-step-ms 20 --max-num-seqs 2 --max-model-len 2048 --port {port}`;
  const router = await startCli([
    "router",
    "--port",
    "0",
    "--admin-key",
    KEY,
    "--policy",
    "least-load",
    "--spawn",
    spawn,
    "--min-replicas",
    "1",
    "--max-replicas",
    "3",
    "--target-waiting",
    "2",
    "--scale-interval",
    "500ms",
    "--scale-down-after",
    "3s",
    "--health-interval",
    "0.25",
  ]);
  const pids = new Set<number>();
  try {
    const admin = async () =>
      (await (await fetch(`${router.url}/admin/replicas`, { headers: { authorization: `Bearer ${KEY}` } })).json()) as AdminView;
    const ready = async () => {
      const v = await admin();
      for (const r of v.replicas) if (r.pid !== null) pids.add(r.pid);
      return v.replicas.filter((r) => r.state === "ready").length;
    };
    const until = async (cond: () => Promise<boolean>, what: string, ms: number) => {
      const end = Date.now() + ms;
      while (!(await cond())) {
        if (Date.now() > end)
          throw new Error(`timed out (${ms} ms) waiting for ${what}; admin view: ${JSON.stringify(await admin())}\n${router.log()}`);
        await sleep(100);
      }
    };
    await until(async () => (await ready()) === 1, "the first replica", 60_000);
    assert.equal((await admin()).replicas.length, 1);

    let stop = false;
    let sent = 0;
    const failures: string[] = [];
    const load = Promise.all(
      Array.from({ length: 16 }, async (_, w) => {
        while (!stop) {
          sent++;
          const res = await fetch(`${router.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({
              messages: [{ role: "user", content: `worker ${w} asks ${sent}` }],
              max_tokens: 30,
              ignore_eos: true,
              stream: w % 2 === 1,
            }),
          });
          const text = await res.text();
          const ok =
            res.status === 200 &&
            (w % 2 === 0
              ? JSON.parse(text).usage.completion_tokens === 30
              : text.endsWith("data: [DONE]\n\n") && !text.includes('"error"'));
          if (!ok) failures.push(`${res.status} ${text.slice(0, 300)}`);
        }
      }),
    );
    await until(async () => (await ready()) === 3, "three ready replicas under load", 90_000);
    t.diagnostic(`scaled to 3 after ${sent} requests`);
    await sleep(1000); // the three share the load for a moment
    stop = true;
    await load;
    // Idle: after the 3 s window the extra replicas drain and their processes exit.
    await until(async () => (await admin()).replicas.length === 1 && (await ready()) === 1, "one replica again", 60_000);
    assert.deepEqual(failures, [], `${failures.length} of ${sent} requests failed`);
    const m = parsePrometheusSums(await (await fetch(`${router.url}/metrics`)).text(), [
      "tokamak_router_requests_total",
      "tokamak_router_scale_events_total",
    ]);
    assert.equal(m.get("tokamak_router_requests_total"), sent, "the router answered every request once");
    assert.ok((m.get("tokamak_router_scale_events_total") ?? 0) >= 4, "two up, two down at least");
    const alive = () =>
      [...pids].filter((pid) => {
        try {
          process.kill(pid, 0);
          return true;
        } catch {
          return false;
        }
      });
    // A drained replica leaves the pool first, then gets SIGTERM and drains itself.
    await until(async () => alive().length === 1, "the drained replicas' processes to exit", 30_000);
    assert.equal(alive().length, 1, `spawned ${pids.size} replica processes; the drained ones exited`);
    t.diagnostic(`${sent} requests, none failed; ${pids.size} replica processes spawned`);
  } finally {
    await router.stop("SIGTERM");
    // The router stops its replicas on the way out.
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
});
