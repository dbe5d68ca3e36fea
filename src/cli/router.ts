/** `tokamak router`: the OpenAI API in front of many replicas, with an admin API and an optional autoscaler. */
import { type Command, InvalidArgumentError } from "commander";
import { readFileSync } from "node:fs";
import { Autoscaler } from "../router/autoscaler.js";
import { DEFAULT_POLICY_OPTIONS, POLICIES, type PolicyName, Router } from "../router/policy.js";
import { DEFAULT_POOL_OPTIONS, ReplicaPool } from "../router/pool.js";
import { DEFAULT_BREAKER } from "../router/replica.js";
import { buildRouterApp } from "../router/router-app.js";
import { RouterMetrics } from "../router/router-metrics.js";
import { apiKeyProblem } from "../server/auth.js";

/** "60s", "2m", "500ms", "1h" or plain seconds → milliseconds. */
export function parseDuration(flag: string) {
  return (v: string): number => {
    const m = /^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$/.exec(v);
    if (!m) throw new InvalidArgumentError(`${flag} takes a duration such as 60s, 2m, 500ms or a number of seconds, got "${v}"`);
    return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? "s") as "ms" | "s" | "m" | "h"];
  };
}

function num(flag: string, min: number, integer = false) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n)))
      throw new InvalidArgumentError(`${flag} must be ${integer ? "an integer" : "a number"} >= ${min}, got "${v}"`);
    return n;
  };
}

const collect = (v: string, prev: string[]) => [...prev, v];

interface RouterFlags {
  replica: string[];
  policy: string;
  host: string;
  port: number;
  apiKey?: string;
  replicaApiKey?: string;
  adminKey?: string;
  adminKeyFile?: string;
  metricsNoAuth: boolean;
  healthInterval: number;
  balanceAbsThreshold: number;
  balanceRelThreshold: number;
  cacheThreshold: number;
  maxTreeChars: number;
  region?: string;
  regionSaturationWaiting: number;
  regionLoadWeightMs: number;
  discoverDns?: string;
  discoverRegion?: string;
  maxAttempts: number;
  spawn?: string;
  minReplicas: number;
  maxReplicas: number;
  targetWaiting: number;
  scaleDownAfter: number;
  scaleUpAfter: number;
  scaleInterval: number;
  startupTimeout: number;
  shutdownTimeout: number;
}

export function registerRouter(program: Command): void {
  program
    .command("router")
    .description(
      "route OpenAI requests across replicas (tokamak serve, vLLM, ...) by prefix-cache affinity, load or region; add, drain and autoscale them",
    )
    .option(
      "--replica <url>",
      "a replica's root URL, optionally with a region: http://10.0.0.5:8000@region=eu (repeat the flag for more)",
      collect,
      [],
    )
    .option("--policy <policy>", `${POLICIES.join(", ")}`, "cache-aware")
    .option("--host <host>", "address to listen on", "127.0.0.1")
    .option("--port <port>", "port to listen on (0: any free port)", num("--port", 0, true), 8080)
    .option("--api-key <key>", "clients must send Authorization: Bearer <key> (also $TOKAMAK_API_KEY); passed on to replicas")
    .option("--replica-api-key <key>", "the key sent to replicas, replacing the client's (also $TOKAMAK_REPLICA_API_KEY)")
    .option("--admin-key <key>", "the admin API's key (also $TOKAMAK_ADMIN_KEY); without one /admin answers 403")
    .option("--admin-key-file <file>", "read the admin key from a file (a mounted Kubernetes Secret)")
    .option("--metrics-no-auth", "serve /metrics without the API key", false)
    .option(
      "--health-interval <s>",
      "seconds between /health and /metrics probes of each replica",
      parseDuration("--health-interval"),
      2000,
    )
    .option(
      "--balance-abs-threshold <n>",
      "cache-aware: load gap (running + waiting) past which the least-loaded replica wins...",
      num("--balance-abs-threshold", 0),
      64,
    )
    .option(
      "--balance-rel-threshold <x>",
      "...when also the most loaded has this many times the load of the least",
      num("--balance-rel-threshold", 1),
      1.5,
    )
    .option(
      "--cache-threshold <f>",
      "cache-aware: share of the prompt a replica must have seen for affinity to decide",
      num("--cache-threshold", 0),
      0.5,
    )
    .option(
      "--max-tree-chars <n>",
      "prompt characters remembered per replica for cache-aware routing",
      num("--max-tree-chars", 1024, true),
      DEFAULT_POOL_OPTIONS.maxTreeCharsPerReplica,
    )
    .option("--region <name>", "region policy: the region of requests without an x-tokamak-region header")
    .option(
      "--region-saturation-waiting <n>",
      "region policy: a replica with this many waiting requests is saturated",
      num("--region-saturation-waiting", 1),
      DEFAULT_POLICY_OPTIONS.regionSaturationWaiting,
    )
    .option(
      "--region-load-weight-ms <ms>",
      "region policy: round-trip milliseconds one unit of load is worth when failing over",
      num("--region-load-weight-ms", 0),
      DEFAULT_POLICY_OPTIONS.regionLoadWeightMs,
    )
    .option(
      "--discover-dns <name:port>",
      "replicas are the addresses of this DNS name (a Kubernetes headless Service), re-resolved every health interval",
    )
    .option("--discover-region <name>", "the region of replicas found by --discover-dns")
    .option("--max-attempts <n>", "replicas tried per request when one fails before answering", num("--max-attempts", 1, true), 3)
    .option("--spawn <command>", 'autoscale: the command that starts one replica, with {port}, e.g. "tokamak serve MODEL --port {port}"')
    .option("--min-replicas <n>", "autoscale: fewest replicas", num("--min-replicas", 0, true), 1)
    .option("--max-replicas <n>", "autoscale: most replicas", num("--max-replicas", 1, true), 4)
    .option(
      "--target-waiting <n>",
      "autoscale: mean waiting requests per replica to steer to (the HPA's averageValue)",
      num("--target-waiting", 0),
      4,
    )
    .option(
      "--scale-down-after <duration>",
      "autoscale: scale-down stabilisation window (the HPA's behavior.scaleDown)",
      parseDuration("--scale-down-after"),
      60_000,
    )
    .option("--scale-up-after <duration>", "autoscale: scale-up stabilisation window", parseDuration("--scale-up-after"), 0)
    .option(
      "--scale-interval <duration>",
      "autoscale: time between decisions (the HPA's sync period)",
      parseDuration("--scale-interval"),
      15_000,
    )
    .option(
      "--startup-timeout <duration>",
      "autoscale: a spawned replica not healthy by then is stopped",
      parseDuration("--startup-timeout"),
      600_000,
    )
    .option(
      "--shutdown-timeout <s>",
      "on SIGTERM: seconds in-flight requests may take before the router exits",
      num("--shutdown-timeout", 0),
      30,
    )
    .action((flags: RouterFlags) => routerCommand(flags));
}

function key(flag: string, value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const problem = apiKeyProblem(value);
  if (problem) throw new Error(`${flag}: ${problem}`);
  return value;
}

async function routerCommand(f: RouterFlags): Promise<void> {
  if (!(POLICIES as readonly string[]).includes(f.policy))
    throw new Error(`--policy must be one of ${POLICIES.join(", ")}, got "${f.policy}"`);
  if (f.replica.length === 0 && !f.spawn && !f.discoverDns)
    process.stderr.write("note: no --replica, --spawn or --discover-dns: add replicas with POST /admin/replicas\n");
  let adminKey = f.adminKey ?? process.env.TOKAMAK_ADMIN_KEY;
  if (f.adminKeyFile) {
    try {
      adminKey = readFileSync(f.adminKeyFile, "utf8").trim();
    } catch (err) {
      throw new Error(`--admin-key-file ${f.adminKeyFile}: ${(err as Error).message}`, { cause: err });
    }
  }
  const pool = new ReplicaPool({
    healthIntervalMs: f.healthInterval,
    probeTimeoutMs: Math.max(500, Math.min(5000, f.healthInterval)),
    breaker: DEFAULT_BREAKER,
    replicaApiKey: key("--replica-api-key", f.replicaApiKey ?? process.env.TOKAMAK_REPLICA_API_KEY),
    discoverDns: f.discoverDns,
    discoverRegion: f.discoverRegion,
    maxTreeCharsPerReplica: f.maxTreeChars,
  });
  for (const spec of f.replica) pool.add(spec);
  const router = new Router(f.policy as PolicyName, pool.tree, {
    balanceAbsThreshold: f.balanceAbsThreshold,
    balanceRelThreshold: f.balanceRelThreshold,
    cacheThreshold: f.cacheThreshold,
    defaultRegion: f.region,
    regionSaturationWaiting: f.regionSaturationWaiting,
    regionLoadWeightMs: f.regionLoadWeightMs,
  });
  const metrics = new RouterMetrics(pool);
  const scaler = f.spawn
    ? new Autoscaler(
        pool,
        {
          spawn: f.spawn,
          minReplicas: f.minReplicas,
          maxReplicas: f.maxReplicas,
          targetWaiting: f.targetWaiting,
          scaleDownAfterMs: f.scaleDownAfter,
          scaleUpAfterMs: f.scaleUpAfter,
          intervalMs: f.scaleInterval,
          startupTimeoutMs: f.startupTimeout,
          tolerance: 0.1,
          region: f.region,
        },
        metrics,
      )
    : undefined;
  const app = buildRouterApp({
    pool,
    router,
    metrics,
    apiKey: key("--api-key", f.apiKey ?? process.env.TOKAMAK_API_KEY),
    replicaApiKey: key("--replica-api-key", f.replicaApiKey ?? process.env.TOKAMAK_REPLICA_API_KEY),
    adminKey: key(f.adminKeyFile ? "--admin-key-file" : "--admin-key", adminKey),
    metricsNoAuth: f.metricsNoAuth,
    maxAttempts: f.maxAttempts,
    adminExtra: scaler ? () => ({ autoscaler: scaler.describe() }) : undefined,
  });
  pool.start();
  const url = await app.listen({ host: f.host, port: f.port });
  // Replicas spawned after the listen: a supervisor that reads the banner can already ask /health.
  if (scaler) await scaler.start();
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    process.stderr.write(`${sig}: no new requests; waiting up to ${f.shutdownTimeout} s for in-flight ones\n`);
    scaler?.stop();
    const backstop = setTimeout(() => process.exit(0), f.shutdownTimeout * 1000 + 35_000);
    backstop.unref();
    const closing = app.close();
    const cut = setTimeout(() => app.server.closeAllConnections(), f.shutdownTimeout * 1000);
    cut.unref();
    void closing
      .then(() => pool.close())
      .then(() => {
        process.stderr.write("bye\n");
        process.exit(0);
      });
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  process.stderr.write(
    `tokamak router: ${f.policy} over ${pool.replicas.size} replica(s)${scaler ? ` (autoscaling ${f.minReplicas}–${f.maxReplicas} on waiting ${f.targetWaiting})` : ""}; ` +
      `OpenAI-compatible API at ${url}/v1; admin at ${url}/admin/replicas${adminKey ? "" : " (off: no --admin-key)"}; metrics at ${url}/metrics\n`,
  );
}
