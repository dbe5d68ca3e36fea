/**
 * The live dashboard in a real browser (headless Chromium from Debian's
 * `chromium` package, driven by puppeteer-core): it asks for the API key,
 * then shows KV blocks becoming owned and free again as requests run, and
 * counters moving, at two or more updates per second. Saves a screenshot to
 * test-artifacts/dashboard.png.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { startServer, type RunningServer } from "../src/server/serve.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const CHROMIUM = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].find(
  (p) => p && existsSync(p),
);
const ARTIFACTS = join(import.meta.dirname, "..", "..", "test-artifacts");
const API_KEY = "dash-key";
const root = mkdtempSync(join(tmpdir(), "tokamak-dash-"));
let server: RunningServer;
let browser: Browser;
let page: Page;

describe(
  "dashboard in headless Chromium",
  { skip: CHROMIUM ? false : "no Chromium found: install Debian's chromium package (.ci/run does) or set CHROMIUM_PATH" },
  () => {
    before(async () => {
      const dir = join(root, "m");
      writeTinyModel(dir, { arch: "qwen3", dtype: "bf16", vocabSize: 4096, hiddenSize: 64, numLayers: 2 });
      server = await startServer(dir, {
        port: 0,
        apiKey: API_KEY,
        servedModelName: ["dash"],
        engine: { maxModelLen: 512, numBlocks: 96, maxNumSeqs: 8, threads: 1 },
      });
      browser = await puppeteer.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
      });
      page = await browser.newPage();
      await page.setViewport({ width: 1400, height: 1000 });
    });
    after(async () => {
      await browser?.close();
      await server?.shutdown(1000);
      rmSync(root, { recursive: true, force: true });
    });

    const text = (id: string) => page.$eval(`#${id}`, (e) => e.textContent ?? "");
    const num = async (id: string) => Number(await text(id));

    async function until(what: string, check: () => Promise<boolean>, ms = 15_000): Promise<void> {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        if (await check()) return;
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.fail(`timed out waiting for: ${what}`);
    }

    it("asks for the API key, keeps it, and goes live", async () => {
      await page.goto(`${server.url}/dashboard`);
      await page.waitForSelector("#login", { visible: true });
      await page.type("#key", API_KEY);
      await page.click("#loginform button");
      await until("first snapshot", async () => (await num("updates")) > 0);
      assert.equal(await text("status"), "live");
      assert.equal(await page.evaluate(() => localStorage.getItem("tokamak-api-key")), API_KEY);
      assert.equal(await num("kv-total"), 96);
      assert.equal(await num("kv-used"), 0);
    });

    it("updates at least twice a second", async () => {
      const a = await num("updates");
      await new Promise((r) => setTimeout(r, 2000));
      const b = await num("updates");
      assert.ok(b - a >= 4, `${b - a} updates in 2 s`);
    });

    it("shows blocks owned while requests run (owner on hover), then free again, and the counters move", async () => {
      const body = (i: number) =>
        JSON.stringify({
          model: "dash",
          prompt: Array.from({ length: 90 }, (_, j) => (i * 13 + j) % 4096),
          max_tokens: 150,
          ignore_eos: true,
        });
      const requests = Array.from({ length: 6 }, (_, i) =>
        fetch(`${server.url}/v1/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
          body: body(i),
        }),
      );
      await until("blocks owned and requests running", async () => (await num("kv-used")) > 0 && (await num("running")) > 0);
      const rows = await page.$$eval("#reqrows tr", (trs) => trs.map((tr) => tr.textContent ?? ""));
      assert.ok(
        rows.some((r) => /cmpl-/.test(r) && /running/.test(r)),
        `live requests table: ${rows.join(" | ")}`,
      );
      // Hover the first block: it belongs to a running request.
      const box = (await (await page.$("#kvgrid"))!.boundingBox())!;
      await page.mouse.move(box.x + 2, box.y + 2);
      await until("tooltip names the owner", async () => /cmpl-/.test(await text("tip")));
      mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: join(ARTIFACTS, "dashboard.png"), fullPage: true });
      await until("generation rate shown", async () => (await num("gen-rate")) > 0 || (await text("gen-rate")).endsWith("k"));
      for (const r of await Promise.all(requests)) assert.equal(r.status, 200);
      await until("blocks free again", async () => (await num("kv-used")) === 0 && (await num("running")) === 0);
      assert.ok((await num("kv-cached")) > 0, "finished prompts stay as cached prefix blocks");
      assert.notEqual(await text("ttft-p50"), "–");
      assert.ok((await num("ttft-n")) >= 6);
      const memory = await text("memlegend");
      assert.match(memory, /weights/);
      assert.match(memory, /kv-cache/);
    });

    it("/v1/admin/memory gives the same snapshot as JSON, behind the API key", async () => {
      const denied = await fetch(`${server.url}/v1/admin/memory`);
      assert.equal(denied.status, 401);
      const snap = (await (await fetch(`${server.url}/v1/admin/memory`, { headers: { authorization: `Bearer ${API_KEY}` } })).json()) as {
        kv: { numBlocks: number; used: number; cached: number; free: number };
        memory: { total: number; byTag: Record<string, number>; groups: { bytes: number }[] };
      };
      assert.equal(snap.kv.numBlocks, 96);
      assert.equal(snap.kv.used + snap.kv.cached + snap.kv.free, 96);
      assert.equal(
        Object.values(snap.memory.byTag).reduce((a, b) => a + b, 0),
        snap.memory.total,
      );
      assert.equal(
        snap.memory.groups.reduce((a, g) => a + g.bytes, 0),
        snap.memory.total,
      );
      const events = await fetch(`${server.url}/dashboard/events`);
      assert.equal(events.status, 401, "the event stream needs the key too");
    });
  },
);
