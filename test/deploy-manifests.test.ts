/**
 * The Kubernetes manifests under deploy/: every YAML document parses (the same under YAML 1.1,
 * which kubectl and Helm read, and YAML 1.2), every Kubernetes object validates against its
 * schema (kubernetes-models; an unknown kind fails, it is never skipped), and the references that
 * no schema can check hold: Service selectors and ports, probe ports, autoscaler targets, the
 * custom metric's name across the HPA, prometheus-adapter and KEDA, the termination timing, the
 * router's DNS discovery and admin-key mount, and the CLI flags in the containers' args.
 * No cluster runs here: nothing is applied.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { Metrics } from "../src/server/metrics.js";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler";
import type { IIoK8sApiCoreV1Container } from "kubernetes-models/v1/Container";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { PersistentVolumeClaim } from "kubernetes-models/v1/PersistentVolumeClaim";
import type { IIoK8sApiCoreV1Probe } from "kubernetes-models/v1/Probe";
import { Secret } from "kubernetes-models/v1/Secret";
import { Service } from "kubernetes-models/v1/Service";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const ROOT = new URL("../../", import.meta.url);
const DEPLOY = new URL("deploy/", ROOT);
const NAMESPACE = "tokamak";

/** Files that are not Kubernetes objects, read by name. */
const ADAPTER_VALUES = "prometheus-adapter-values.yaml";
const KUSTOMIZATION = "kustomization.yaml";
/** Files deliberately left out of kustomization.yaml (its comments say why). */
const NOT_IN_KUSTOMIZATION = [
  "admin-key-secret.example.yaml",
  "models-pvc.example.yaml",
  "keda-scaledobject.yaml",
  "servicemonitor.yaml",
  ADAPTER_VALUES,
].sort();

interface Model {
  apiVersion: string;
  kind: string;
  metadata?: { name?: string; namespace?: string; labels?: { [key: string]: string } };
  validate(): void;
}
type ModelClass = new (data: never) => Model;

/** apiVersion + kind → the class that validates it. Anything else is an error. */
const MODELS = new Map<string, ModelClass>([
  ["v1 Namespace", Namespace],
  ["v1 Service", Service],
  ["v1 Secret", Secret],
  ["v1 PersistentVolumeClaim", PersistentVolumeClaim],
  ["apps/v1 Deployment", Deployment],
  ["autoscaling/v2 HorizontalPodAutoscaler", HorizontalPodAutoscaler],
  ["keda.sh/v1alpha1 ScaledObject", ScaledObject],
  ["monitoring.coreos.com/v1 ServiceMonitor", ServiceMonitor],
]);

/** Builds the kubernetes-models object for a parsed document and validates it (throws on a schema error or an unknown kind). */
function construct(doc: unknown): Model {
  assert.ok(doc !== null && typeof doc === "object" && !Array.isArray(doc), "a Kubernetes object is a mapping");
  const { apiVersion, kind } = doc as { apiVersion?: unknown; kind?: unknown };
  assert.ok(typeof apiVersion === "string" && typeof kind === "string", "apiVersion and kind are strings");
  const cls = MODELS.get(`${apiVersion} ${kind}`);
  if (!cls) throw new Error(`unknown kind ${apiVersion} ${kind}: add its kubernetes-models class to MODELS`);
  const model = new cls(doc as never);
  model.validate();
  return model;
}

/** All documents of a YAML file; they must read the same as YAML 1.1 (kubectl, Helm) and 1.2. */
function readYaml(file: string): unknown[] {
  const text = readFileSync(new URL(file, DEPLOY), "utf8");
  const read = (version: "1.1" | "1.2") =>
    parseAllDocuments(text, { version }).map((d, i) => {
      assert.deepEqual(d.errors, [], `${file} document ${i + 1} parses`);
      const js: unknown = d.toJS();
      assert.ok(js !== null && js !== undefined, `${file} document ${i + 1} is not empty`);
      return js;
    });
  const docs = read("1.1");
  assert.deepEqual(read("1.2"), docs, `${file}: no scalar that YAML 1.1 and 1.2 read differently (octal, yes/no, ...)`);
  return docs;
}

const files = readdirSync(DEPLOY)
  .filter((f) => f.endsWith(".yaml") || f.endsWith(".yml"))
  .sort();
const objects: { file: string; model: Model }[] = [];
for (const file of files) {
  if (file === ADAPTER_VALUES || file === KUSTOMIZATION) continue;
  readYaml(file).forEach((doc, i) => {
    try {
      objects.push({ file, model: construct(doc) });
    } catch (e) {
      throw new Error(`${file} document ${i + 1}: ${(e as Error).message}`, { cause: e });
    }
  });
}
const all = objects.map((o) => o.model);
const deployments = all.filter((m): m is Deployment => m instanceof Deployment);
const services = all.filter((m): m is Service => m instanceof Service);
const hpas = all.filter((m): m is HorizontalPodAutoscaler => m instanceof HorizontalPodAutoscaler);
const scaledObjects = all.filter((m): m is ScaledObject => m instanceof ScaledObject);
const serviceMonitors = all.filter((m): m is ServiceMonitor => m instanceof ServiceMonitor);
const secrets = all.filter((m): m is Secret => m instanceof Secret);
const claims = all.filter((m): m is PersistentVolumeClaim => m instanceof PersistentVolumeClaim);

const named = <T extends Model>(list: T[], name: string): T => {
  const found = list.filter((m) => m.metadata?.name === name);
  assert.equal(found.length, 1, `exactly one ${list[0]?.kind ?? "object"} named ${name}`);
  return found[0]!;
};
const podLabels = (d: Deployment) => d.spec!.template.metadata?.labels ?? {};
const containersOf = (d: Deployment) => d.spec!.template.spec!.containers;
const matches = (selector: { [key: string]: string } | undefined, labels: { [key: string]: string } | undefined) =>
  selector !== undefined && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels?.[k] === v);
/** The Deployments whose pods a label selector picks (in the same namespace). */
const selected = (ns: string | undefined, selector: { [key: string]: string } | undefined) =>
  deployments.filter((d) => d.metadata?.namespace === ns && matches(selector, podLabels(d)));
/** A port named or numbered as in a Service's targetPort or a probe exists on the container. */
const hasPort = (c: IIoK8sApiCoreV1Container, port: number | string) =>
  (c.ports ?? []).some((p) => (typeof port === "string" ? p.name === port : p.containerPort === port));
/** The value after `--flag` (or in `--flag=value`) in args. */
function flagValue(args: string[], flag: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === flag) return args[i + 1];
    if (args[i]!.startsWith(`${flag}=`)) return args[i]!.slice(flag.length + 1);
  }
  return undefined;
}
const flagsIn = (args: string[]) => args.filter((a) => a.startsWith("--")).map((a) => a.split("=")[0]!);
const mentionsFlag = (help: string, flag: string) => new RegExp(`(^|[\\s,])${flag}(?![\\w-])`, "m").test(help);
/** Seconds a preStop hook sleeps (exec `sleep N`, `sh -c "sleep N"`, or the native sleep action); 0 without one. */
function preStopSleep(c: IIoK8sApiCoreV1Container): number {
  const preStop = c.lifecycle?.preStop;
  if (!preStop) return 0;
  if (preStop.sleep) return preStop.sleep.seconds;
  const m = /(?:^|\s)sleep\s+(\d+)(?:\s|$)/.exec((preStop.exec?.command ?? []).join(" "));
  assert.ok(m, `${c.name}: preStop is a sleep`);
  return Number(m[1]);
}

const replica = named(deployments, "tokamak-replica");
const replicaContainer = containersOf(replica).find((c) => c.args?.[0] === "serve");
const router = named(deployments, "tokamak-router");
const routerContainer = containersOf(router).find((c) => c.args?.[0] === "router");
const adapterValues = readYaml(ADAPTER_VALUES)[0] as {
  rules: { custom: { seriesQuery: string; name: { matches: string; as: string }; metricsQuery: string }[] };
};

test("every Kubernetes object under deploy/ validates against its schema, in namespace tokamak", () => {
  assert.ok(files.length >= 8, `found ${files.length} YAML files in deploy/`);
  for (const want of ["Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "ScaledObject", "Secret", "ServiceMonitor"]) {
    assert.ok(
      all.some((m) => m.kind === want),
      `deploy/ has a ${want}`,
    );
  }
  assert.equal(
    named(
      all.filter((m) => m.kind === "Namespace"),
      NAMESPACE,
    ).kind,
    "Namespace",
  );
  for (const { file, model } of objects) {
    assert.ok(model.metadata?.name, `${file}: ${model.kind} has a name`);
    if (model.kind !== "Namespace")
      assert.equal(model.metadata?.namespace, NAMESPACE, `${file}: ${model.kind} ${model.metadata?.name} namespace`);
  }
});

test("validation is real: a broken Deployment and an unknown kind are rejected", () => {
  const broken = structuredClone(replica.toJSON()) as {
    spec: { template: { spec: { containers: { ports: { containerPort: unknown }[] }[] } } };
  };
  broken.spec.template.spec.containers[0]!.ports[0]!.containerPort = "eighty";
  assert.throws(() => construct(broken), /containerPort|integer/);
  const noSelector = structuredClone(replica.toJSON()) as { spec: { selector?: unknown } };
  delete noSelector.spec.selector;
  assert.throws(() => construct(noSelector), /selector/);
  assert.throws(() => construct({ apiVersion: "v1", kind: "Bogus", metadata: { name: "x" } }), /unknown kind v1 Bogus/);
  // The unbroken one still passes.
  construct(replica.toJSON());
});

test("kustomization.yaml lists every manifest but the documented exceptions", () => {
  const kustomization = readYaml(KUSTOMIZATION)[0] as { apiVersion: string; kind: string; resources: string[] };
  assert.equal(kustomization.apiVersion, "kustomize.config.k8s.io/v1beta1");
  assert.equal(kustomization.kind, "Kustomization");
  for (const r of kustomization.resources) assert.ok(existsSync(new URL(r, DEPLOY)), `kustomization resource ${r} exists`);
  const left = files.filter((f) => f !== KUSTOMIZATION && !kustomization.resources.includes(f)).sort();
  assert.deepEqual(left, NOT_IN_KUSTOMIZATION);
  assert.ok(
    kustomization.resources.includes("hpa.yaml") && !kustomization.resources.includes("keda-scaledobject.yaml"),
    "HPA or KEDA, not both",
  );
});

test("Deployments: selectors match their pod labels; probes name ports the container has", () => {
  for (const d of deployments) {
    const name = d.metadata!.name!;
    assert.ok(matches(d.spec!.selector.matchLabels, podLabels(d)), `${name}: selector matches its pod template`);
    for (const c of containersOf(d)) {
      for (const [kind, probe] of Object.entries({ startup: c.startupProbe, readiness: c.readinessProbe, liveness: c.livenessProbe }) as [
        string,
        IIoK8sApiCoreV1Probe | undefined,
      ][]) {
        const port = probe?.httpGet?.port ?? probe?.tcpSocket?.port;
        if (port !== undefined) assert.ok(hasPort(c, port), `${name}/${c.name}: ${kind} probe port ${port} exists`);
      }
      assert.ok(c.readinessProbe?.httpGet?.path === "/health", `${name}/${c.name}: readiness on /health`);
      assert.ok(c.livenessProbe?.httpGet?.path === "/health", `${name}/${c.name}: liveness on /health`);
      const grace = d.spec!.template.spec!.terminationGracePeriodSeconds ?? 30;
      assert.ok(grace > preStopSleep(c), `${name}: terminationGracePeriodSeconds ${grace} > preStop sleep`);
    }
  }
});

test("Services select exactly one Deployment, and their target ports exist on its containers", () => {
  for (const s of services) {
    const name = s.metadata!.name!;
    const targets = selected(s.metadata?.namespace, s.spec?.selector);
    assert.equal(targets.length, 1, `Service ${name} selects one Deployment's pods (${targets.map((d) => d.metadata!.name).join(", ")})`);
    for (const p of s.spec!.ports!) {
      const target = p.targetPort ?? p.port;
      assert.ok(
        containersOf(targets[0]!).some((c) => hasPort(c, target)),
        `Service ${name} port ${p.port}: targetPort ${target} exists on ${targets[0]!.metadata!.name}`,
      );
    }
  }
  assert.equal(selected(NAMESPACE, named(services, "tokamak-router").spec!.selector)[0], router);
  assert.equal(named(services, "tokamak-router").spec!.ports![0]!.port, 80);
  assert.equal(selected(NAMESPACE, named(services, "tokamak-replicas").spec!.selector)[0], replica);
  const headless = named(services, "tokamak-replicas-headless");
  assert.equal(headless.spec!.clusterIP, "None");
  assert.equal(headless.spec!.publishNotReadyAddresses ?? false, false, "DNS lists only ready replicas");
  assert.equal(selected(NAMESPACE, headless.spec!.selector)[0], replica);
});

test("ServiceMonitors select exactly one Service each, by a port it has", () => {
  for (const sm of serviceMonitors) {
    const targets = services.filter(
      (s) => s.metadata?.namespace === sm.metadata?.namespace && matches(sm.spec.selector.matchLabels, s.metadata?.labels),
    );
    assert.equal(
      targets.length,
      1,
      `ServiceMonitor ${sm.metadata!.name} selects one Service (${targets.map((s) => s.metadata!.name).join(", ")})`,
    );
    for (const e of sm.spec.endpoints ?? []) {
      assert.ok(
        targets[0]!.spec!.ports!.some((p) => p.name === e.port),
        `ServiceMonitor ${sm.metadata!.name}: port ${e.port} on Service ${targets[0]!.metadata!.name}`,
      );
    }
  }
  assert.ok(serviceMonitors.some((sm) => matches(sm.spec.selector.matchLabels, named(services, "tokamak-replicas").metadata?.labels)));
});

test("replica: `serve` with flags that `tokamak serve --help` lists; the drain fits the grace period; the model is mounted read-only", () => {
  assert.ok(replicaContainer, "a container of tokamak-replica runs `serve`");
  assert.deepEqual(replicaContainer.command, ["tokamak"]);
  const args = replicaContainer.args!;
  const help = execFileSync(process.execPath, ["dist/src/cli/main.js", "serve", "--help"], { cwd: fileURLToPath(ROOT), encoding: "utf8" });
  assert.match(help, /Usage: tokamak serve/);
  for (const flag of flagsIn(args)) assert.ok(mentionsFlag(help, flag), `serve --help lists ${flag}`);
  for (const flag of ["--host", "--port", "--shutdown-timeout", "--metrics-no-auth"])
    assert.ok(args.includes(flag), `replica args have ${flag}`);
  const port = Number(flagValue(args, "--port"));
  assert.ok(hasPort(replicaContainer, port), `--port ${port} is a container port`);
  assert.equal(flagValue(args, "--host"), "0.0.0.0");

  // preStop sleep, then SIGTERM drains for up to --shutdown-timeout: all before SIGKILL.
  const shutdownTimeout = Number(flagValue(args, "--shutdown-timeout"));
  const sleep = preStopSleep(replicaContainer);
  const grace = replica.spec!.template.spec!.terminationGracePeriodSeconds!;
  assert.ok(sleep >= 5, `preStop sleeps ${sleep} s`);
  assert.ok(grace > sleep + shutdownTimeout, `terminationGracePeriodSeconds ${grace} > ${sleep} + ${shutdownTimeout}`);

  // The model folder (the first argument after `serve`) is on the tokamak-models claim, read-only.
  const modelDir = args[1]!;
  const mount = (replicaContainer.volumeMounts ?? []).find((m) => modelDir.startsWith(`${m.mountPath}/`));
  assert.ok(mount, `${modelDir} is under a volume mount`);
  assert.equal(mount.readOnly, true);
  const volume = replica.spec!.template.spec!.volumes!.find((v) => v.name === mount.name);
  assert.equal(volume?.persistentVolumeClaim?.claimName, "tokamak-models");
  named(claims, "tokamak-models");
  assert.equal(replicaContainer.resources?.limits?.["nvidia.com/gpu"], 1);
});

test("router: flags that `tokamak router --help` lists; DNS discovery names the headless Service; the admin key is a mounted Secret", () => {
  assert.ok(routerContainer, "a container of tokamak-router runs `router`");
  assert.deepEqual(routerContainer.command, ["tokamak"]);
  const args = routerContainer.args!;
  const help = execFileSync(process.execPath, ["dist/src/cli/main.js", "router", "--help"], { cwd: fileURLToPath(ROOT), encoding: "utf8" });
  for (const flag of flagsIn(args)) assert.ok(mentionsFlag(help, flag), `router --help lists ${flag}`);
  const port = Number(flagValue(args, "--port"));
  assert.ok(hasPort(routerContainer, port), `--port ${port} is a container port`);

  const discover = flagValue(args, "--discover-dns");
  const m = /^([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)$/.exec(discover ?? "");
  assert.ok(m, `--discover-dns ${discover} is <service>.<namespace>.svc.cluster.local:<port>`);
  const headless = named(
    services.filter((s) => s.metadata?.namespace === m[2]),
    m[1]!,
  );
  assert.equal(headless.spec!.clusterIP, "None", `${m[1]} is headless (one A record per pod)`);
  assert.ok(
    headless.spec!.ports!.some((p) => p.port === Number(m[3])),
    `${m[1]} has port ${m[3]}`,
  );
  assert.equal(selected(m[2], headless.spec!.selector)[0], replica, `${m[1]} selects the replicas`);
  assert.ok(
    containersOf(replica).some((c) => hasPort(c, Number(m[3]))),
    `replica pods listen on ${m[3]}`,
  );

  // --admin-key-file is a file of a mounted Secret volume; the example Secret has that key.
  const keyFile = flagValue(args, "--admin-key-file")!;
  const mount = (routerContainer.volumeMounts ?? []).find((v) => keyFile.startsWith(`${v.mountPath}/`));
  assert.ok(mount, `${keyFile} is under a volume mount`);
  const volume = router.spec!.template.spec!.volumes!.find((v) => v.name === mount.name);
  assert.ok(volume?.secret, `${mount.name} is a Secret volume`);
  const item = volume.secret.items?.find((i) => i.path === keyFile.slice(mount.mountPath.length + 1));
  assert.ok(item, `the Secret volume maps a key to ${keyFile}`);
  const example = named(secrets, volume.secret.secretName!);
  assert.ok(item.key in { ...example.stringData, ...example.data }, `Secret ${example.metadata!.name} has key ${item.key}`);
  assert.ok(!volume.secret.optional, "the admin key is required");
});

test("autoscaling: the HPA and the KEDA ScaledObject target the replica Deployment with the same metric, bounds and behavior", () => {
  assert.equal(hpas.length, 1);
  assert.equal(scaledObjects.length, 1);
  const hpa = hpas[0]!;
  const so = scaledObjects[0]!;
  for (const ref of [hpa.spec!.scaleTargetRef, so.spec.scaleTargetRef]) {
    assert.equal(ref.kind ?? "Deployment", "Deployment");
    assert.equal(ref.apiVersion ?? "apps/v1", "apps/v1");
    assert.equal(named(deployments, ref.name), replica);
  }
  assert.equal(replica.spec!.replicas, undefined, "the autoscaler owns the replica count");

  // The HPA's Pods metric is what prometheus-adapter exposes.
  const metric = hpa.spec!.metrics![0]!;
  assert.equal(metric.type, "Pods");
  const rules = adapterValues.rules.custom;
  assert.equal(rules.length, 1);
  const rule = rules[0]!;
  assert.equal(metric.pods!.metric.name, rule.name.as, "HPA metric name = prometheus-adapter rule's `as`");
  assert.equal(metric.pods!.target.type, "AverageValue");
  assert.equal(String(metric.pods!.target.averageValue), "4");
  const series = /__name__="([^"]+)"/.exec(rule.seriesQuery)?.[1];
  assert.equal(series, "tokamak:num_requests_waiting");
  assert.match(series, new RegExp(rule.name.matches), "the rule's `matches` renames that series");
  assert.match(rule.seriesQuery, /namespace!=""/);
  assert.match(rule.seriesQuery, /pod!=""/);
  assert.equal(rule.metricsQuery, "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)");
  // Tokamak's /metrics does export that series.
  assert.ok(new Metrics("m", 16).registry.getSingleMetric(series), `the server's Metrics registers ${series}`);

  // KEDA asks Prometheus for the same series, with the same target per pod.
  const trigger = so.spec.triggers[0]!;
  assert.equal(trigger.type, "prometheus");
  assert.equal(trigger.metricType ?? "AverageValue", "AverageValue");
  assert.ok(trigger.metadata.query!.includes(`${series}{namespace="${NAMESPACE}"}`), trigger.metadata.query);
  assert.equal(trigger.metadata.threshold, String(metric.pods!.target.averageValue));
  assert.match(trigger.metadata.serverAddress!, /^http:\/\/prometheus-operated\.monitoring\.svc:9090$/);

  assert.equal(hpa.spec!.minReplicas, 1);
  assert.equal(hpa.spec!.maxReplicas, 8);
  assert.equal(so.spec.minReplicaCount, hpa.spec!.minReplicas);
  assert.equal(so.spec.maxReplicaCount, hpa.spec!.maxReplicas);
  const behavior = hpa.spec!.behavior!;
  assert.deepEqual(so.spec.advanced?.horizontalPodAutoscalerConfig?.behavior, behavior, "KEDA's behavior = the HPA's");
  assert.equal(behavior.scaleUp!.stabilizationWindowSeconds, 0);
  assert.equal(behavior.scaleDown!.stabilizationWindowSeconds, 60, "= the one-box autoscaler's --scale-down-after 60s");
});
