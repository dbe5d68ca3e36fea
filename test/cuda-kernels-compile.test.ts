/**
 * CI has no GPU, but every CUDA kernel must still compile: this test builds
 * every instantiation listed in the kernel manifest with the machine's nvcc
 * for sm_80 and sm_90a (warnings are errors), reports register use and fails
 * on large register spills. It also checks that the sources include no
 * toolkit header (NVRTC compiles them at run time without -I), that the
 * manifest's argument lists and launch sizes match the kernels, and, where an
 * NVRTC library is found, compiles each file with it exactly as the backend
 * will (sources from memory, name expressions, lowered names).
 */
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { describe, it } from "node:test";
import {
  type KernelSpec,
  type TemplateArgs,
  KERNELS,
  PAGED_ATTENTION,
  instantiations,
  kernelProgram,
  nameExpression,
  nvrtcOptions,
  pagedAttentionPlan,
} from "../src/backend/cuda/kernels/manifest.js";

const KERNEL_DIR = join(import.meta.dirname, "..", "..", "src", "backend", "cuda", "kernels");
const ARCHS = ["sm_80", "sm_90a"];
/** Spilling more than this (stores + loads, bytes) fails the test; less is only reported. */
const MAX_SPILL_BYTES = 64;
/** Instantiations per nvcc job, so the heavy files spread over the cores. */
const MAX_PER_JOB = 10;

function findNvcc(): { path?: string; searched: string[] } {
  const dirs: string[] = [];
  for (const env of ["CUDA_HOME", "CUDA_PATH"]) if (process.env[env]) dirs.push(join(process.env[env]!, "bin"));
  dirs.push("/usr/local/cuda/bin");
  dirs.push(...(process.env.PATH ?? "").split(delimiter).filter((d) => d !== ""));
  const searched = dirs.map((d) => join(d, "nvcc"));
  return { path: searched.find((p) => existsSync(p)), searched };
}

function kernelSources(): string[] {
  return readdirSync(KERNEL_DIR)
    .filter((f) => f.endsWith(".cu") || f.endsWith(".cuh"))
    .sort();
}

// ---------------------------------------------------------------- source checks (need no nvcc)

interface CppParam {
  name: string;
  type: "ptr" | "i32" | "f32";
  elem?: string;
}

/**
 * The launch bound and parameter list of every `__global__` function template in a source file, by name. The
 * bound is a number, or the name of an int template parameter (`__launch_bounds__(BLOCK)`) resolved per instantiation.
 */
function kernelSignatures(source: string): Map<string, { maxThreads: number | string; params: CppParam[] }> {
  const out = new Map<string, { maxThreads: number | string; params: CppParam[] }>();
  const re = /__global__\s+void\s+(?:__launch_bounds__\((\w+)(?:,\s*\d+)?\)\s*)?(\w+)\s*\(([^)]*)\)/g;
  for (const m of source.matchAll(re)) {
    const params = m[3]!.split(",").map((p) => parseParam(p.trim()));
    out.set(m[2]!, { maxThreads: m[1] ? (/^\d+$/.test(m[1]) ? Number(m[1]) : m[1]) : 1024, params });
  }
  return out;
}

/** The launch bound of one instantiation. */
function launchBound(spec: KernelSpec, bound: number | string, t: TemplateArgs): number {
  if (typeof bound === "number") return bound;
  const param = spec.templateParams.find((p) => p.name === bound);
  assert.ok(param?.kind === "int", `${spec.name}: __launch_bounds__(${bound}) names no int template parameter`);
  return Number(t[bound]);
}

/** Pointer element types besides the dtype template parameters. */
const FIXED_ELEMS = new Set(["i32", "f32", "u32", "f64", "u8"]);
const CPP_ELEM: Readonly<Record<string, string>> = { int: "i32", float: "f32", u32: "u32", double: "f64" };

function signatureOf(spec: KernelSpec): { maxThreads: number | string; params: CppParam[] } {
  const sig = kernelSignatures(readFileSync(join(KERNEL_DIR, spec.file), "utf8")).get(spec.name.replace(/^tk::/, ""));
  assert.ok(sig, `${spec.name}: no __global__ function of that name in ${spec.file}`);
  return sig;
}

function parseParam(text: string): CppParam {
  const words = text
    .replace(/\*/g, " * ")
    .split(/\s+/)
    .filter((w) => w !== "" && w !== "const" && w !== "__restrict__");
  const name = words.pop()!.replace(/_(\w)/g, (_, c: string) => c.toUpperCase());
  const base = CPP_ELEM[words[0]!] ?? words[0]!;
  if (words.includes("*")) return { name, type: "ptr", elem: base };
  if (base !== "i32" && base !== "f32") throw new Error(`unexpected kernel parameter type in "${text}"`);
  return { name, type: base };
}

describe("CUDA kernel sources", () => {
  it("include no toolkit or system header, only files of their own folder", () => {
    const files = new Set(kernelSources());
    for (const file of files) {
      const lines = readFileSync(join(KERNEL_DIR, file), "utf8").split("\n");
      lines.forEach((line, i) => {
        const m = /^\s*#\s*include\s*(.*)$/.exec(line);
        if (!m) return;
        const local = /^"([^"]+)"/.exec(m[1]!.trim());
        assert.ok(
          local && files.has(local[1]!),
          `${file}:${i + 1}: "${line.trim()}" — kernels may include only headers of this folder (NVRTC has no toolkit -I)`,
        );
      });
    }
  });

  it("are all described by the manifest, with the kernels' exact argument lists", () => {
    const cuFiles = kernelSources().filter((f) => f.endsWith(".cu"));
    for (const f of cuFiles)
      assert.ok(
        KERNELS.some((k) => k.file === f),
        `${f} has no entry in manifest.ts`,
      );
    const names = new Set<string>();
    for (const spec of KERNELS) {
      assert.ok(!names.has(spec.name), `${spec.name} listed twice`);
      names.add(spec.name);
      assert.ok(cuFiles.includes(spec.file), `${spec.name}: ${spec.file} does not exist in ${KERNEL_DIR}`);
      const want = signatureOf(spec).params.map((p) => `${p.name}: ${p.type}${p.elem ? `<${p.elem}>` : ""}`);
      const got = spec.args.map((a) => `${a.name}: ${a.type}${a.elem ? `<${a.elem}>` : ""}`);
      assert.deepEqual(got, want, `${spec.name}: manifest arguments differ from the kernel's parameters in ${spec.file}`);
      const templateNames = new Set(spec.templateParams.map((p) => p.name));
      for (const a of spec.args) {
        if (a.type === "ptr" && !FIXED_ELEMS.has(a.elem!))
          assert.ok(templateNames.has(a.elem!), `${spec.name}.${a.name}: element ${a.elem}`);
      }
      assert.ok(instantiations(spec).length > 0, `${spec.name}: no instantiations`);
    }
  });

  it("give launch configurations within the device limits and the kernels' launch bounds", () => {
    const large = { numTokens: 65536, numRows: 524288, numSeqs: 1024, numHeads: 64, numKvHeads: 8, numSplits: 16, rotDim: 128 };
    const sizeSets = [
      { ...large, headDim: 128, dim: 16384, inter: 28672, cols: 152064, n: 152064 },
      {
        numTokens: 1,
        numRows: 1,
        numSeqs: 1,
        numHeads: 4,
        numKvHeads: 2,
        numSplits: 1,
        rotDim: 16,
        headDim: 16,
        dim: 16,
        inter: 8,
        cols: 1,
        n: 1,
      },
    ];
    for (const spec of KERNELS) {
      const { maxThreads } = signatureOf(spec);
      for (const [sizes, t] of sizeSets.flatMap((s) => instantiations(spec).map((t) => [s, t] as const))) {
        const { grid, block, sharedBytes } = spec.launch(sizes, t);
        const threads = block[0] * block[1] * block[2];
        const bound = launchBound(spec, maxThreads, t);
        assert.ok(
          threads >= 32 && threads <= bound && threads % 32 === 0,
          `${nameExpression(spec, t)}: block ${block}, launch bound ${bound}`,
        );
        assert.ok(grid.every((g) => Number.isInteger(g) && g >= 1) && grid[1] <= 65535 && grid[2] <= 65535, `${spec.name}: grid ${grid}`);
        assert.equal(sharedBytes, 0);
      }
    }
  });
});

describe("paged attention plan", () => {
  const llama8b = { numHeads: 32, numKvHeads: 8, headDim: 128, numSms: 132 };
  it("splits the KV of a lone long decode across the GPU and sizes its workspace", () => {
    const plan = pagedAttentionPlan({ ...llama8b, numTokens: 1, numSeqs: 1, maxQueryLen: 1, maxSeqLen: 4096 });
    assert.equal(plan.qpw, 1);
    assert.equal(plan.numSplits, 16);
    assert.equal(plan.workspaceBytes, 16 * 32 * (128 + 1) * 4);
    const { grid } = PAGED_ATTENTION.launch(
      { numTokens: 1, numSeqs: 1, numHeads: 32, numKvHeads: 8, numSplits: plan.numSplits },
      { QPW: plan.qpw },
    );
    assert.deepEqual(grid, [2, 8, 16]);
  });
  it("keeps prefill and short contexts in one split", () => {
    assert.equal(pagedAttentionPlan({ ...llama8b, numTokens: 2048, numSeqs: 1, maxQueryLen: 2048, maxSeqLen: 2048 }).numSplits, 1);
    assert.equal(pagedAttentionPlan({ ...llama8b, numTokens: 1, numSeqs: 1, maxQueryLen: 1, maxSeqLen: 200 }).numSplits, 1);
    assert.equal(pagedAttentionPlan({ ...llama8b, numHeads: 64, numTokens: 4, numSeqs: 4, maxQueryLen: 1, maxSeqLen: 100 }).qpw, 2);
  });
});

// ---------------------------------------------------------------- nvcc

interface Job {
  file: string;
  arch: string;
  exprs: string[];
}

interface Usage {
  arch: string;
  name: string;
  registers: number;
  spillBytes: number;
  stackBytes: number;
  smemBytes: number;
}

function jobsFor(spec: KernelSpec[], arch: string): Job[] {
  const byFile = new Map<string, string[]>();
  for (const s of spec) for (const t of instantiations(s)) byFile.set(s.file, [...(byFile.get(s.file) ?? []), nameExpression(s, t)]);
  const jobs: Job[] = [];
  for (const [file, exprs] of byFile) {
    const shards = Math.ceil(exprs.length / MAX_PER_JOB);
    const per = Math.ceil(exprs.length / shards);
    for (let i = 0; i < exprs.length; i += per) jobs.push({ file, arch, exprs: exprs.slice(i, i + per) });
  }
  return jobs;
}

/** A translation unit that instantiates each name expression by taking its address, as NVRTC's name expressions do. */
function wrapperSource(job: Job): string {
  const refs = job.exprs.map((e) => `    (void*)&${e},`).join("\n");
  return `#include "${job.file}"\n__attribute__((used)) void* tokamak_instantiations[] = {\n${refs}\n};\n`;
}

function run(cmd: string, args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolve({ code, output: stdout + stderr });
    });
  });
}

async function pool<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

function parseResourceUsage(output: string, arch: string): Usage[] {
  const usages: Usage[] = [];
  let current: Usage | undefined;
  for (const line of output.split("\n")) {
    const fn = /Function properties for (\S+)/.exec(line);
    if (fn) {
      current = { arch, name: fn[1]!, registers: 0, spillBytes: 0, stackBytes: 0, smemBytes: 0 };
      usages.push(current);
      continue;
    }
    if (!current) continue;
    const spill = /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/.exec(line);
    if (spill) {
      current.stackBytes = Number(spill[1]);
      current.spillBytes = Number(spill[2]) + Number(spill[3]);
    }
    const regs = /Used (\d+) registers/.exec(line);
    if (regs) current.registers = Number(regs[1]);
    const smem = /(\d+) bytes smem/.exec(line);
    if (smem) current.smemBytes = Number(smem[1]);
  }
  return usages;
}

/** "void tk::rms_norm<float, float>(float*, ...)" -> "tk::rms_norm<float, float>", when c++filt is at hand. */
function demangle(names: string[]): Map<string, string> {
  const map = new Map<string, string>();
  const r = spawnSync("c++filt", [], { input: names.join("\n"), encoding: "utf8" });
  if (r.status !== 0 || !r.stdout) return map;
  r.stdout
    .split("\n")
    .slice(0, names.length)
    .forEach((d, i) => map.set(names[i]!, d.replace(/^void /, "").replace(/\(.*$/, "")));
  return map;
}

const nvcc = findNvcc();

describe("CUDA kernels compile with nvcc", { skip: nvcc.path ? false : `nvcc not found; searched ${nvcc.searched.join(", ")}` }, () => {
  it(
    `every manifest instantiation compiles for ${ARCHS.join(" and ")} without warnings or large spills`,
    { timeout: 600_000 },
    async (t) => {
      const dir = mkdtempSync(join(tmpdir(), "tokamak-nvcc-"));
      try {
        const jobs = ARCHS.flatMap((arch) => jobsFor([...KERNELS], arch));
        const started = performance.now();
        const results = await pool(jobs, availableParallelism(), async (job) => {
          const src = join(dir, `${job.file.replace(/\W/g, "_")}_${job.arch}_${jobs.indexOf(job)}.cu`);
          writeFileSync(src, wrapperSource(job));
          const args = [
            "--cubin",
            "-std=c++17",
            `-arch=${job.arch}`,
            "-I",
            KERNEL_DIR,
            "-Werror",
            "all-warnings",
            "--resource-usage",
            "-o",
            "/dev/null",
            src,
          ];
          return { job, ...(await run(nvcc.path!, args)) };
        });
        const seconds = (performance.now() - started) / 1000;

        const failures = results.filter((r) => r.code !== 0);
        assert.equal(
          failures.length,
          0,
          failures.map((r) => `nvcc failed on ${r.job.file} for ${r.job.arch} (${r.job.exprs.join("; ")}):\n${r.output}`).join("\n\n"),
        );

        const usages = results.flatMap((r) => {
          const u = parseResourceUsage(r.output, r.job.arch);
          assert.equal(
            u.length,
            r.job.exprs.length,
            `${r.job.file} ${r.job.arch}: ${u.length} kernels compiled for ${r.job.exprs.length} name expressions`,
          );
          return u;
        });
        const names = demangle([...new Set(usages.map((u) => u.name))]);
        const count = results.reduce((n, r) => n + r.job.exprs.length, 0);
        t.diagnostic(
          `nvcc: ${count} kernel instantiations (${jobs.length} jobs, ${availableParallelism()} at a time) in ${seconds.toFixed(1)} s`,
        );
        for (const u of usages.sort(
          (a, b) => (names.get(a.name) ?? a.name).localeCompare(names.get(b.name) ?? b.name) || a.arch.localeCompare(b.arch),
        )) {
          const spill = u.spillBytes > 0 ? `, SPILLS ${u.spillBytes} B` : "";
          t.diagnostic(
            `${u.arch} ${names.get(u.name) ?? u.name}: ${u.registers} registers, ${u.smemBytes} B smem, ${u.stackBytes} B stack${spill}`,
          );
        }
        const spills = usages.filter((u) => u.spillBytes > MAX_SPILL_BYTES);
        assert.equal(
          spills.length,
          0,
          `register spills over ${MAX_SPILL_BYTES} bytes: ${spills.map((u) => `${u.arch} ${names.get(u.name) ?? u.name} ${u.spillBytes} B`).join(", ")}`,
        );
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});

// ---------------------------------------------------------------- NVRTC (where a library is at hand)

function findNvrtc(): { path?: string; searched: string[] } {
  const dirs = (process.env.LD_LIBRARY_PATH ?? "").split(delimiter).filter((d) => d !== "");
  for (const env of ["CUDA_HOME", "CUDA_PATH"]) if (process.env[env]) dirs.push(join(process.env[env]!, "lib64"));
  dirs.push("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib");
  const venv = process.env.VIRTUAL_ENV;
  if (venv && existsSync(join(venv, "lib"))) {
    for (const py of readdirSync(join(venv, "lib")).filter((d) => d.startsWith("python"))) {
      for (const sub of ["cu13", "cuda_nvrtc"]) dirs.push(join(venv, "lib", py, "site-packages", "nvidia", sub, "lib"));
    }
  }
  for (const dir of dirs) {
    if (!existsSync(dir)) continue;
    const lib = readdirSync(dir)
      .filter((f) => /^libnvrtc\.so(\.\d+)*$/.test(f))
      .sort()[0];
    if (lib) return { path: join(dir, lib), searched: dirs };
  }
  return { searched: dirs };
}

const nvrtc = findNvrtc();

describe(
  "CUDA kernels compile with NVRTC",
  { skip: nvrtc.path ? false : `no libnvrtc.so found (set VIRTUAL_ENV or LD_LIBRARY_PATH); searched ${nvrtc.searched.join(", ")}` },
  () => {
    it("each file compiles from memory with no include path, and its name expressions lower to symbols", async (t) => {
      const { default: koffi } = await import("koffi");
      const libDir = dirname(nvrtc.path!);
      // NVRTC dlopens its builtins library by soname; loading it first makes that work without LD_LIBRARY_PATH.
      for (const f of readdirSync(libDir).filter((f) => /^libnvrtc-builtins\.so[.\d]*$/.test(f))) koffi.load(join(libDir, f));
      const lib = koffi.load(nvrtc.path!);
      const create = lib.func(
        "int nvrtcCreateProgram(_Out_ void **prog, const char *src, const char *name, int n, const char **headers, const char **names)",
      );
      const addName = lib.func("int nvrtcAddNameExpression(void *prog, const char *name)");
      const compile = lib.func("int nvrtcCompileProgram(void *prog, int n, const char **options)");
      const lowered = lib.func("int nvrtcGetLoweredName(void *prog, const char *name, _Out_ const char **lowered)");
      const logSize = lib.func("int nvrtcGetProgramLogSize(void *prog, _Out_ size_t *size)");
      const getLog = lib.func("int nvrtcGetProgramLog(void *prog, _Out_ uint8_t *log)");
      const destroy = lib.func("int nvrtcDestroyProgram(_Inout_ void **prog)");
      const files = [...new Set(KERNELS.map((k) => k.file))];
      for (const file of files) {
        // One instantiation per kernel: what NVRTC adds over nvcc is per file (headers, builtins), not per instantiation.
        const exprs = KERNELS.filter((k) => k.file === file).map((k) => nameExpression(k, instantiations(k)[0]!));
        for (const arch of ARCHS) {
          const prog: unknown[] = [null];
          const { source, headers } = kernelProgram(file, KERNEL_DIR);
          const names = Object.keys(headers);
          assert.equal(create(prog, source, file, names.length, Object.values(headers), names), 0);
          try {
            for (const e of exprs) assert.equal(addName(prog[0], e), 0, e);
            const opts = nvrtcOptions(arch);
            const rc = compile(prog[0], opts.length, opts);
            const size = [0];
            logSize(prog[0], size);
            const log = Buffer.alloc(Number(size[0]));
            getLog(prog[0], log);
            const text = log.toString("utf8").replace(/\0+$/, "").trim();
            assert.equal(rc, 0, `NVRTC failed on ${file} for ${arch}:\n${text}`);
            assert.equal(text, "", `NVRTC warnings on ${file} for ${arch}:\n${text}`);
            for (const e of exprs) {
              const name: unknown[] = [null];
              assert.equal(lowered(prog[0], e, name), 0, e);
              assert.match(String(name[0]), /^_Z/, `${e} lowered to ${name[0]}`);
            }
          } finally {
            destroy(prog);
          }
        }
      }
      t.diagnostic(`NVRTC (${nvrtc.path}): ${files.length} files compiled for ${ARCHS.join(", ")}`);
    });
  },
);
