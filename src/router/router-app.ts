/**
 * `tokamak router`: the OpenAI routes of `tokamak serve` in front of many replicas. Bodies and streams
 * pass through unbuffered; a request is sent again only when its replica failed before answering (no
 * byte of a response had come, so nothing was generated for the client), or refused it (429, 503).
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import { bearerCheck } from "../server/auth.js";
import { ApiError } from "../server/errors.js";
import { type Decision, type PolicyName, type Router, routingKey } from "./policy.js";
import { PoolError, type ReplicaPool, requestFn, stopProcess } from "./pool.js";
import type { Replica } from "./replica.js";
import type { RouterMetrics } from "./router-metrics.js";

export interface RouterAppOptions {
  pool: ReplicaPool;
  router: Router;
  metrics: RouterMetrics;
  /** Clients must send this key (it is passed on to the replicas unless `replicaApiKey` is set). */
  apiKey?: string;
  /** The key the router sends to replicas, replacing the client's. */
  replicaApiKey?: string;
  /** The admin API's key; without it the admin API answers 403. */
  adminKey?: string;
  metricsNoAuth?: boolean;
  /** Attempts per request across replicas (the first plus retries). */
  maxAttempts?: number;
  bodyLimit?: number;
  logger?: boolean;
  /** Extra fields for GET /admin/replicas (the autoscaler's state). */
  adminExtra?: () => Record<string, unknown>;
}

type Route = "chat" | "completion" | "other";

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "host",
  "content-length",
]);

function forwardHeaders(h: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

const now = () => performance.now();

export function buildRouterApp(o: RouterAppOptions): FastifyInstance {
  const { pool, router, metrics } = o;
  const maxAttempts = o.maxAttempts ?? 3;
  const app = Fastify({ logger: o.logger ?? false, bodyLimit: o.bodyLimit ?? 32 * 2 ** 20 });
  // Bodies stay bytes: they are passed on as they came; the router reads only what it routes on.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("*", { parseAs: "buffer" }, (_req, body, done) => done(null, body));

  const clientAuth = bearerCheck(o.apiKey);
  const adminAuth = o.adminKey === undefined ? undefined : bearerCheck(o.adminKey);
  app.addHook("onRequest", async (request) => {
    const url = request.routeOptions.url ?? "";
    if (url === "/health") return;
    if (url.startsWith("/admin/")) {
      if (!adminAuth)
        throw new ApiError(403, "the admin API is off: start the router with --admin-key (or --admin-key-file)", "permission_error");
      adminAuth(request.headers);
      return;
    }
    if (url === "/metrics" && o.metricsNoAuth) return;
    clientAuth(request.headers);
  });
  app.setErrorHandler(async (err: Error & { statusCode?: number }, request, reply) => {
    const e =
      err instanceof ApiError
        ? err
        : err instanceof PoolError
          ? new ApiError(err.status, err.message, err.status === 404 ? "not_found_error" : "invalid_request_error")
          : err.statusCode === 413
            ? new ApiError(413, `the request body is larger than the limit of ${o.bodyLimit ?? 32 * 2 ** 20} bytes`)
            : err.statusCode !== undefined && err.statusCode < 500
              ? new ApiError(err.statusCode, err.message)
              : new ApiError(500, "internal router error; the router's log has the details", "internal_server_error");
    if (e.status >= 500) request.log.error(err);
    return reply.code(e.status).headers(e.headers).send(e.body());
  });

  app.get("/health", async (_req, reply) => {
    const ready = pool.routable().length;
    if (ready === 0) throw new ApiError(503, "no replica is ready", "service_unavailable", null, null, { "Retry-After": "2" });
    return reply.send({ status: "ok", ready_replicas: ready, replicas: pool.replicas.size });
  });
  app.get("/metrics", async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));

  // The admin API: the replicas, added, drained and removed at run time.
  app.get("/admin/replicas", async () => ({
    policy: router.policy,
    replicas: [...pool.replicas.values()].map((r) => r.describe()),
    removed: pool.removed.slice(-32),
    ...o.adminExtra?.(),
  }));
  app.post("/admin/replicas", async (request, reply) => {
    const b = parseJson(request.body as Buffer | undefined);
    if (typeof b !== "object" || b === null || typeof (b as { url?: unknown }).url !== "string")
      throw new ApiError(
        400,
        'send {"url": "http://host:port", "region": "eu" (optional), "id": "name" (optional)}',
        "invalid_request_error",
        "url",
      );
    const { url, region, id } = b as { url: string; region?: unknown; id?: unknown };
    if (region !== undefined && typeof region !== "string")
      throw new ApiError(400, "region must be a string", "invalid_request_error", "region");
    if (id !== undefined && typeof id !== "string") throw new ApiError(400, "id must be a string", "invalid_request_error", "id");
    let r: Replica;
    try {
      r = pool.add(url, { id, region });
    } catch (err) {
      if (err instanceof PoolError) throw err;
      throw new ApiError(400, (err as Error).message.replace(/^--replica /, "url "), "invalid_request_error", "url");
    }
    return reply.code(201).send(r.describe());
  });
  app.post<{ Params: { id: string }; Querystring: { wait?: string } }>("/admin/replicas/:id/drain", async (request, reply) => {
    const r = pool.get(request.params.id);
    const done = pool.drain(r.id);
    if (request.query.wait === "1" || request.query.wait === "true") {
      await done;
      return reply.send({ ...r.describe(), state: "removed" });
    }
    return reply.code(202).send(r.describe());
  });
  app.delete<{ Params: { id: string } }>("/admin/replicas/:id", async (request) => {
    const r = pool.remove(request.params.id);
    void stopProcess(r);
    return { ...r.describe(), state: "removed" };
  });

  // Everything else a replica serves, passed through.
  const proxied = (route: Route) => (request: FastifyRequest, reply: FastifyReply) => proxy(request, reply, route);
  app.post("/v1/chat/completions", proxied("chat"));
  app.post("/v1/completions", proxied("completion"));
  app.all("/v1/*", proxied("other"));
  for (const path of ["/tokenize", "/detokenize", "/version"]) app.all(path, proxied("other"));

  async function proxy(request: FastifyRequest, reply: FastifyReply, route: Route): Promise<void> {
    const t0 = now();
    const body = request.body instanceof Buffer ? request.body : undefined;
    // Only the prefix-keyed policies read the prompt.
    const keyed = router.policy === "cache-aware" || router.policy === "region";
    const key = route === "other" || !keyed ? "" : routingKey(parseJson(body), route);
    const regionHeader = request.headers["x-tokamak-region"];
    const region = typeof regionHeader === "string" && regionHeader.length > 0 ? regionHeader : undefined;
    const routeLabel =
      route === "other" ? (request.routeOptions.url ?? "other") : route === "chat" ? "/v1/chat/completions" : "/v1/completions";
    reply.hijack();
    const raw = reply.raw;
    let clientGone = false;
    raw.on("close", () => {
      if (!raw.writableFinished) clientGone = true;
    });
    const tried = new Set<string>();
    let lastRefusal: { status: number; headers: IncomingHttpHeaders; body: Buffer } | undefined;
    for (let attempt = 0; attempt < maxAttempts && !clientGone; attempt++) {
      const candidates = pool.routable().filter((r) => !tried.has(r.id));
      if (candidates.length === 0) break;
      const d: Decision =
        route === "other"
          ? { replica: router.leastLoaded(candidates), reason: "least-load", matchRatio: 0 }
          : router.choose(candidates, { key, region });
      tried.add(d.replica.id);
      if (route !== "other") countDecision(d);
      const result = await forwardOnce(request, raw, body, d, t0, routeLabel, () => clientGone);
      if (result.kind === "done") return;
      metrics.retries.inc({ replica: d.replica.id });
      if (result.kind === "refused") lastRefusal = result;
    }
    if (clientGone) return;
    if (lastRefusal) {
      // Every replica refused: the last refusal (429 or 503, with its Retry-After) goes to the client.
      metrics.requests.inc({ replica: "none", route: routeLabel, status: String(lastRefusal.status) });
      raw.writeHead(lastRefusal.status, forwardHeaders(lastRefusal.headers));
      raw.end(lastRefusal.body);
      return;
    }
    metrics.requests.inc({ replica: "none", route: routeLabel, status: "503" });
    const states = [...pool.replicas.values()].map((r) => `${r.id} ${r.state}${r.breakerOpen ? " (breaker open)" : ""}`).join(", ");
    const e = new ApiError(
      503,
      pool.replicas.size === 0
        ? "the router has no replicas; add one with POST /admin/replicas or --replica"
        : `no replica could take the request (${states || "none"}); retry later`,
      "service_unavailable",
      null,
      null,
      { "Retry-After": "2" },
    );
    raw.writeHead(503, { "content-type": "application/json; charset=utf-8", ...e.headers });
    raw.end(JSON.stringify(e.body()));
  }

  function countDecision(d: Decision): void {
    metrics.decisions.inc({ policy: router.policy as PolicyName, reason: d.reason, replica: d.replica.id });
    if (d.matchRatio > router.o.cacheThreshold) metrics.affinityHits.inc({ replica: d.replica.id });
    if (d.wantedRegion !== undefined) {
      const served = d.replica.region ?? "";
      metrics.regionDecisions.inc({ wanted: d.wantedRegion, served, outcome: served === d.wantedRegion ? "in-region" : d.reason });
    }
  }

  type Attempt = { kind: "done" } | { kind: "failed" } | { kind: "refused"; status: number; headers: IncomingHttpHeaders; body: Buffer };

  function forwardOnce(
    request: FastifyRequest,
    raw: ServerResponse,
    body: Buffer | undefined,
    d: Decision,
    t0: number,
    routeLabel: string,
    clientGone: () => boolean,
  ): Promise<Attempt> {
    const r = d.replica;
    const { request: send, agent } = requestFn(r.url);
    const headers = forwardHeaders(request.headers);
    if (o.replicaApiKey) headers.authorization = `Bearer ${o.replicaApiKey}`;
    headers["content-length"] = String(body?.length ?? 0);
    const fwd = request.headers["x-forwarded-for"];
    headers["x-forwarded-for"] = (typeof fwd === "string" ? `${fwd}, ` : "") + (request.ip ?? "");
    r.inFlight++;
    return new Promise<Attempt>((resolve) => {
      let settled = false;
      const finish = (a: Attempt) => {
        if (settled) return;
        settled = true;
        r.inFlight--;
        raw.off("close", onClientClose);
        resolve(a);
      };
      const up = send(`${r.url}${request.url}`, { method: request.method, headers, agent });
      // The client went away: the replica sees its connection close and aborts the generation.
      const onClientClose = () => {
        if (!raw.writableFinished) up.destroy(new Error("the client disconnected"));
      };
      raw.on("close", onClientClose);
      up.on("error", (err) => {
        if (clientGone()) return finish({ kind: "done" });
        if (responded) return; // the response's own close handler reports it
        // No byte of a response came: nothing was generated for this client, so another replica may take it.
        metrics.errors.inc({ replica: r.id, kind: "connect" });
        r.failed(`${err.message}`);
        finish({ kind: "failed" });
      });
      let responded = false;
      up.on("response", (res: IncomingMessage) => {
        responded = true;
        const status = res.statusCode ?? 502;
        if ((status === 429 || status === 503) && !clientGone()) {
          // A refusal generates nothing: read it, and let the caller try another replica (or pass it on if none is left).
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("error", () => undefined);
          res.on("close", () => {
            metrics.errors.inc({ replica: r.id, kind: "refused" });
            if (status === 503) r.failed(`answered 503`);
            finish({ kind: "refused", status, headers: res.headers, body: Buffer.concat(chunks) });
          });
          return;
        }
        const out = forwardHeaders(res.headers);
        out["x-tokamak-replica"] = r.id;
        out["x-tokamak-route"] = `${router.policy}; reason=${d.reason}; match=${d.matchRatio.toFixed(3)}`;
        if (r.region !== undefined) out["x-tokamak-region"] = r.region;
        const isStream = String(res.headers["content-type"] ?? "").startsWith("text/event-stream");
        if (res.headers["content-length"] !== undefined) out["content-length"] = res.headers["content-length"];
        raw.writeHead(status, out);
        raw.flushHeaders();
        let first = true;
        res.on("data", (chunk: Buffer) => {
          if (first) {
            first = false;
            metrics.firstByte.observe({ replica: r.id, route: routeLabel }, (now() - t0) / 1000);
          }
          if (!raw.write(chunk)) {
            res.pause();
            raw.once("drain", () => res.resume());
          }
        });
        res.on("error", () => undefined);
        res.on("close", () => {
          const labels = { replica: r.id, route: routeLabel };
          if (res.complete) {
            raw.end();
            r.succeeded();
            metrics.requests.inc({ ...labels, status: String(status) });
            metrics.latency.observe(labels, (now() - t0) / 1000);
            return finish({ kind: "done" });
          }
          if (clientGone()) {
            metrics.requests.inc({ ...labels, status: "499" });
            return finish({ kind: "done" });
          }
          // The replica went away mid-response: a stream ends with an error event and [DONE]; other bodies are cut.
          metrics.errors.inc({ replica: r.id, kind: "midstream" });
          metrics.requests.inc({ ...labels, status: "502" });
          r.failed("the connection closed mid-response");
          if (isStream) {
            const e = new ApiError(
              502,
              `the replica ${r.id} (${r.url}) failed while streaming this response; the output so far is incomplete`,
              "replica_failed",
            );
            raw.end(`data: ${JSON.stringify(e.body())}\n\ndata: [DONE]\n\n`);
          } else raw.destroy();
          finish({ kind: "done" });
        });
      });
      up.end(body);
    });
  }

  return app;
}

function parseJson(body: Buffer | undefined): unknown {
  if (!body || body.length === 0) return undefined;
  try {
    return JSON.parse(body.toString("utf8"));
  } catch {
    return undefined; // the replica answers the client's malformed JSON with its own 400
  }
}
