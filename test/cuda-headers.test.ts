// The hand-written CUDA constants, struct layouts and symbol names of src/backend/cuda/ffi/*.ts,
// checked against the real headers (cuda.h, nvrtc.h, cublasLt.h + cublas_api.h + library_types.h)
// with a C++ compiler: no GPU and no CUDA library is needed, only the headers.
//
// Header directories searched: $TOKAMAK_CUDA_INCLUDE (path-delimited), $CUDA_HOME/include,
// $CUDA_PATH/include, /usr/local/cuda/include, /usr/local/cuda/targets/x86_64-linux/include,
// and the nvidia-* wheels' nvidia/cu13/include under $VIRTUAL_ENV. Each group is skipped, saying
// why, when its header or the compiler is missing.
//
// What is checked:
// - every exported numeric constant (and constant table) equals the header's enum value / macro;
// - sizeof(cublasLtMatmulHeuristicResult_t) and, through HeuristicResults, the field offsets;
// - every symbol the bindings look up is declared by the header under that very name (not a
//   macro that the header maps to a versioned name), with the same number of parameters and,
//   per parameter and result, the same size and pointer-ness as the koffi type it is bound with.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, describe, it } from "node:test";
import * as cublaslt from "../src/backend/cuda/ffi/cublaslt.js";
import * as driver from "../src/backend/cuda/ffi/driver.js";
import * as nvrtc from "../src/backend/cuda/ffi/nvrtc.js";
import type { LibraryHandle } from "../src/backend/cuda/ffi/koffi.js";

// ---------------------------------------------------------------- environment

function includeDirs(): string[] {
  const dirs: string[] = [];
  for (const d of (process.env.TOKAMAK_CUDA_INCLUDE ?? "").split(delimiter)) if (d) dirs.push(d);
  for (const root of [process.env.CUDA_HOME, process.env.CUDA_PATH]) if (root) dirs.push(join(root, "include"));
  dirs.push("/usr/local/cuda/include", "/usr/local/cuda/targets/x86_64-linux/include");
  const venv = process.env.VIRTUAL_ENV;
  if (venv && existsSync(join(venv, "lib"))) {
    for (const py of readdirSync(join(venv, "lib"))) dirs.push(join(venv, "lib", py, "site-packages", "nvidia", "cu13", "include"));
  }
  return [...new Set(dirs)].filter((d) => existsSync(d));
}

const INCLUDES = includeDirs();
const hasHeader = (h: string): boolean => INCLUDES.some((d) => existsSync(join(d, h)));
const CXX = ["c++", "g++", "clang++"].find((c) => spawnSync(c, ["--version"], { stdio: "ignore" }).status === 0);
const workDir = mkdtempSync(join(tmpdir(), "tokamak-cuda-headers-"));
after(() => rmSync(workDir, { recursive: true, force: true }));

/** Why a group cannot run here, or undefined when it can. */
function skipReason(headers: string[]): string | undefined {
  if (!CXX) return "no C++ compiler (c++, g++ or clang++) on PATH";
  const missing = headers.filter((h) => !hasHeader(h));
  if (missing.length > 0) {
    return `${missing.join(", ")} not found in ${INCLUDES.join(", ") || "(no include directory)"}; set TOKAMAK_CUDA_INCLUDE`;
  }
  return undefined;
}

function cxx(args: string[], input?: string): string {
  const r = spawnSync(CXX!, [...INCLUDES.map((d) => `-I${d}`), ...args], { encoding: "utf8", input, maxBuffer: 256 << 20 });
  if (r.status !== 0) throw new Error(`${CXX} ${args.join(" ")} failed:\n${r.stderr}`);
  return r.stdout;
}

/** What the headers declare: the preprocessed text (macros expanded) and the macro table. */
interface HeaderInfo {
  text: string;
  macros: Map<string, string>;
}

function headerInfo(headers: string[]): HeaderInfo {
  const src = headers.map((h) => `#include <${h}>\n`).join("");
  const text = cxx(["-x", "c++", "-E", "-P", "-"], src);
  const macros = new Map<string, string>();
  for (const line of cxx(["-x", "c++", "-E", "-dM", "-"], src).split("\n")) {
    const m = /^#define (\w+)(?:\(|\s|$)(.*)$/.exec(line);
    if (m) macros.set(m[1]!, m[2]!.trim());
  }
  return { text, macros };
}

const declares = (info: HeaderInfo, name: string): boolean => new RegExp(`\\b${name}\\b`).test(info.text) || info.macros.has(name);

// ---------------------------------------------------------------- the generated program

/** One value the bindings rely on: a C expression and the TypeScript value it must equal. */
interface Expect {
  label: string;
  c: string;
  ts: number;
  /** Identifiers that must exist for `c` to compile. */
  needs: string[];
}

/** A symbol the bindings bind, with its koffi result and argument types. */
interface Binding {
  symbol: string;
  result: string;
  args: readonly string[];
}

const PROGRAM_PRELUDE = `
#include <cstdio>
#include <cstddef>
#include <cstring>
#include <type_traits>
template <class T> static void kind() {
  if constexpr (std::is_void<T>::value) std::printf("v0");
  else if constexpr (std::is_pointer<T>::value) std::printf("p%zu", sizeof(T));
  else if constexpr (std::is_floating_point<T>::value) std::printf("f%zu", sizeof(T));
  else if constexpr (std::is_enum<T>::value) std::printf("e%zu", sizeof(T));
  else if constexpr (std::is_signed<T>::value) std::printf("i%zu", sizeof(T));
  else std::printf("u%zu", sizeof(T));
}
// decltype only: the functions are never referenced, so nothing is linked against CUDA.
template <class F> struct Sig;
template <class R, class... A> struct Sig<R (*)(A...)> {
  static void print(const char *name) {
    std::printf("SIG %s ", name);
    kind<R>();
    std::printf(" %zu", sizeof...(A));
    int dummy[] = {0, (std::printf(" "), kind<A>(), 0)...};
    (void)dummy;
    std::printf("\\n");
  }
};
#define VAL(label, expr) std::printf("VAL %s %lld\\n", label, (long long)(expr));
`;

interface ProgramOutput {
  values: Map<string, number>;
  sigs: Map<string, string[]>;
  lines: string[];
}

function runProgram(name: string, headers: string[], expects: Expect[], bindings: Binding[], extra = ""): ProgramOutput {
  const body = [
    ...expects.map((e) => `  VAL(${JSON.stringify(e.label)}, ${e.c})`),
    ...bindings.map((b) => `  Sig<decltype(&${b.symbol})>::print(${JSON.stringify(b.symbol)});`),
    extra,
  ].join("\n");
  const src = `${headers.map((h) => `#include <${h}>`).join("\n")}\n${PROGRAM_PRELUDE}\nint main() {\n${body}\n  return 0;\n}\n`;
  const cpp = join(workDir, `${name}.cpp`);
  const exe = join(workDir, name);
  writeFileSync(cpp, src);
  cxx(["-std=c++17", "-w", cpp, "-o", exe]);
  const r = spawnSync(exe, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${exe} exited with ${r.status}: ${r.stderr}`);
  const values = new Map<string, number>();
  const sigs = new Map<string, string[]>();
  const lines = r.stdout.split("\n");
  for (const line of lines) {
    const f = line.split(" ");
    if (f[0] === "VAL") values.set(f[1]!, Number(f[2]));
    if (f[0] === "SIG") sigs.set(f[1]!, f.slice(2));
  }
  return { values, sigs, lines };
}

// ---------------------------------------------------------------- what the TypeScript side says

/** Exported numbers named like C constants (CUDA_SUCCESS, CUBLAS_OP_T, ...) and tables of them (CU_DEVICE_ATTRIBUTE). */
function exportedConstants(mod: Record<string, unknown>, cName: (table: string, key: string) => string): Expect[] {
  const out: Expect[] = [];
  for (const [name, value] of Object.entries(mod)) {
    if (!/^(CU|CUDA|CUBLAS|CUBLASLT|NVRTC)_[A-Z0-9_]+$/.test(name)) continue;
    if (typeof value === "number") {
      out.push({ label: name, c: name, ts: value, needs: [name] });
    } else if (value !== null && typeof value === "object") {
      for (const [key, v] of Object.entries(value)) {
        if (typeof v !== "number") continue;
        const c = cName(name, key);
        out.push({ label: `${name}.${key}`, c, ts: v, needs: [c] });
      }
    }
  }
  return out;
}

const CUDA_R_NAMES: Record<string, string> = {
  F32: "CUDA_R_32F",
  F16: "CUDA_R_16F",
  BF16: "CUDA_R_16BF",
  F8_E4M3: "CUDA_R_8F_E4M3",
  F8_E5M2: "CUDA_R_8F_E5M2",
};

function cNameFor(table: string, key: string): string {
  if (table === "CUDA_R") return CUDA_R_NAMES[key] ?? `CUDA_R_${key}`;
  if (table === "CUBLAS_COMPUTE") return `CUBLAS_COMPUTE_${key.replace(/^C/, "")}`; // C32F -> CUBLAS_COMPUTE_32F
  return `${table}_${key.toUpperCase()}`; // CU_STREAM_CAPTURE_MODE.thread_local -> ..._THREAD_LOCAL
}

/** The driver's symbols as bindDriver looks them up: run it against a recording fake library. */
function driverBindings(): Binding[] {
  const seen: Binding[] = [];
  const fake = {
    func(symbol: string, result: string, args: string[]) {
      seen.push({ symbol, result, args });
      return () => 0;
    },
  } as unknown as LibraryHandle;
  const { symbols } = driver.bindDriver(fake, "(headers)");
  const resolved = new Set(Object.values(symbols));
  return seen.filter((b) => resolved.has(b.symbol));
}

/**
 * NVRTC's and cuBLASLt's PROTOTYPES tables are module-private and bound only against a real library,
 * so they are read from the module's source: `name: ["result", ["arg", ...]]`, the key being the symbol.
 */
function prototypesFromSource(file: string): Binding[] {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [
    join(here, "..", "..", "src", "backend", "cuda", "ffi", file),
    join(here, "..", "src", "backend", "cuda", "ffi", file),
  ];
  const path = candidates.find((p) => existsSync(p));
  assert.ok(path, `cannot find ${file} (looked at ${candidates.join(", ")})`);
  const source = readFileSync(path, "utf8");
  const start = source.indexOf("const PROTOTYPES");
  assert.ok(start >= 0, `${file} has no PROTOTYPES table`);
  const end = source.indexOf("\n};", start);
  const table = source.slice(source.indexOf("{", start) + 1, end);
  const out: Binding[] = [];
  for (const m of table.matchAll(/(\w+):\s*\[\s*"([^"]+)",\s*\[([^\]]*)\]\s*,?\s*\]/g)) {
    const args = [...m[3]!.matchAll(/"([^"]+)"/g)].map((a) => a[1]!);
    out.push({ symbol: m[1]!, result: m[2]!, args });
  }
  assert.ok(out.length > 0, `no prototypes parsed from ${file}`);
  return out;
}

/** koffi type -> the kind<>() code the C++ side prints (p = pointer, i/u = signed/unsigned integer, with size). */
const KOFFI_KINDS: Record<string, string> = {
  "void *": "p8",
  "const char *": "p8",
  "const char **": "p8",
  int: "i4",
  int32_t: "i4",
  uint32_t: "u4",
  uint8_t: "u1",
  int64_t: "i8",
  uint64_t: "u8",
  size_t: "u8",
  float: "f4",
  double: "f8",
};

/** Same size and class; an enum matches an integer of its size, and signedness is not an ABI difference on x86-64. */
function compatible(koffiType: string, cKind: string): boolean {
  const want = KOFFI_KINDS[koffiType];
  if (!want) return false;
  const cls = (k: string): string => (k[0] === "e" || k[0] === "i" || k[0] === "u" ? "int" : k[0]!);
  return cls(want) === cls(cKind) && want.slice(1) === cKind.slice(1);
}

function checkBindings(info: HeaderInfo, bindings: Binding[], problems: string[]): Binding[] {
  const ok: Binding[] = [];
  for (const b of bindings) {
    const macro = info.macros.get(b.symbol);
    if (macro !== undefined) {
      problems.push(`${b.symbol}: the header #defines it to ${macro}; bind the exported name ${macro}`);
    } else if (!new RegExp(`\\b${b.symbol}\\s*\\(`).test(info.text)) {
      problems.push(`${b.symbol}: not declared by the headers`);
    } else {
      ok.push(b);
    }
  }
  return ok;
}

function checkSignatures(out: ProgramOutput, bindings: Binding[], problems: string[]): void {
  for (const b of bindings) {
    const sig = out.sigs.get(b.symbol);
    if (!sig) {
      problems.push(`${b.symbol}: no signature printed`);
      continue;
    }
    const [ret, count, ...params] = sig;
    if (!compatible(b.result, ret!)) problems.push(`${b.symbol}: returns ${ret} in C, bound as "${b.result}"`);
    if (Number(count) !== b.args.length) {
      problems.push(`${b.symbol}: takes ${count} parameters in C (${params.join(", ")}), bound with ${b.args.length}`);
      continue;
    }
    b.args.forEach((a, i) => {
      if (!compatible(a, params[i]!)) problems.push(`${b.symbol}: parameter ${i} is ${params[i]} in C, bound as "${a}"`);
    });
  }
}

function checkValues(info: HeaderInfo, expects: Expect[], problems: string[]): Expect[] {
  const ok: Expect[] = [];
  for (const e of expects) {
    const missing = e.needs.filter((n) => !declares(info, n));
    if (missing.length > 0) problems.push(`${e.label}: the headers have no ${missing.join(", ")}`);
    else ok.push(e);
  }
  return ok;
}

function compareValues(out: ProgramOutput, expects: Expect[], problems: string[]): void {
  for (const e of expects) {
    const header = out.values.get(e.label);
    if (header !== e.ts) problems.push(`${e.label} (${e.c}): TypeScript has ${e.ts}, the header ${header}`);
  }
}

/** One header group end to end; throws listing every mismatch. */
function verify(name: string, headers: string[], expects: Expect[], bindings: Binding[], extra = ""): ProgramOutput {
  const info = headerInfo(headers);
  const problems: string[] = [];
  const values = checkValues(info, expects, problems);
  const declared = checkBindings(info, bindings, problems);
  const out = runProgram(name, headers, values, declared, extra);
  compareValues(out, values, problems);
  checkSignatures(out, declared, problems);
  assert.deepEqual(problems, [], `${headers.join(" + ")} disagree with the bindings:\n  ${problems.join("\n  ")}`);
  assert.ok(values.length + declared.length > 0);
  return out;
}

// ---------------------------------------------------------------- the checks

describe("CUDA bindings agree with the CUDA headers", () => {
  const driverSkip = skipReason(["cuda.h"]);
  it("driver.ts: cuda.h constants, symbol names and prototypes", { skip: driverSkip }, () => {
    const expects = exportedConstants(driver as unknown as Record<string, unknown>, cNameFor);
    const bindings = driverBindings();
    assert.ok(bindings.length >= 40, `bindDriver bound only ${bindings.length} symbols`);
    verify("driver", ["cuda.h"], expects, bindings);
  });

  const nvrtcSkip = skipReason(["nvrtc.h"]);
  it("nvrtc.ts: nvrtc.h constants, symbol names and prototypes", { skip: nvrtcSkip }, () => {
    const expects = exportedConstants(nvrtc as unknown as Record<string, unknown>, cNameFor);
    verify("nvrtc", ["nvrtc.h"], expects, prototypesFromSource("nvrtc.ts"));
  });

  const ltSkip = skipReason(["cublasLt.h", "library_types.h"]);
  it("cublaslt.ts: cublasLt.h / cublas_api.h / library_types.h constants, struct layout, symbols", { skip: ltSkip }, () => {
    const expects = exportedConstants(cublaslt as unknown as Record<string, unknown>, cNameFor).filter(
      (e) => e.label !== "HEURISTIC_RESULT_BYTES",
    );
    // The FP8 W8A8 path (createFp8LinearDescriptors in linear-gemm.ts) relies on these: they must stay in the checked tables.
    for (const label of [
      "CUDA_R.F8_E4M3",
      "CUBLASLT_MATMUL_DESC.A_SCALE_POINTER",
      "CUBLASLT_MATMUL_DESC.B_SCALE_POINTER",
      "CUBLASLT_MATMUL_DESC.A_SCALE_MODE",
      "CUBLASLT_MATMUL_DESC.B_SCALE_MODE",
      "CUBLASLT_MATMUL_DESC.FAST_ACCUM",
      "CUBLASLT_MATMUL_DESC.BIAS_DATA_TYPE",
      "CUBLASLT_MATMUL_MATRIX_SCALE.SCALAR_32F",
      "CUBLASLT_MATMUL_MATRIX_SCALE.OUTER_VEC_32F",
    ])
      assert.ok(
        expects.some((e) => e.label === label),
        `${label} is not among the constants checked against the headers`,
      );
    expects.push(
      {
        label: "HEURISTIC_RESULT_BYTES",
        c: "sizeof(cublasLtMatmulHeuristicResult_t)",
        ts: cublaslt.HEURISTIC_RESULT_BYTES,
        needs: ["cublasLtMatmulHeuristicResult_t"],
      },
      // HeuristicResults.algoAddress(i) is the start of result i: algo must be the first member.
      { label: "offsetof(algo)", c: "offsetof(cublasLtMatmulHeuristicResult_t, algo)", ts: 0, needs: ["cublasLtMatmulHeuristicResult_t"] },
    );
    // A sample result, dumped as bytes, read back through HeuristicResults (its field offsets are module-private).
    const sample = `
  {
    cublasLtMatmulHeuristicResult_t r;
    std::memset(&r, 0, sizeof r);
    r.workspaceSize = (size_t)0x123456789ULL;
    r.state = (cublasStatus_t)7;
    r.wavesCount = 1.5f;
    const unsigned char *p = (const unsigned char *)&r;
    std::printf("BYTES");
    for (size_t i = 0; i < sizeof r; i++) std::printf(" %u", p[i]);
    std::printf("\\n");
    std::printf("VAL sizeof(cublasLtMatmulAlgo_t) %zu\\n", sizeof(cublasLtMatmulAlgo_t));
  }`;
    const out = verify("cublaslt", ["cublasLt.h", "library_types.h"], expects, prototypesFromSource("cublaslt.ts"), sample);

    const line = out.lines.find((l) => l.startsWith("BYTES "));
    assert.ok(line, "the sample heuristic result was not printed");
    const bytes = Uint8Array.from(line.split(" ").slice(1).map(Number));
    assert.equal(bytes.length, cublaslt.HEURISTIC_RESULT_BYTES);
    let results: cublaslt.HeuristicResults;
    try {
      results = new cublaslt.HeuristicResults(bytes.buffer, 1);
    } catch (err) {
      // koffi (an optional dependency) is needed only for the buffer's address.
      assert.fail(`cannot build HeuristicResults to check the field offsets: ${(err as Error).message}`);
    }
    assert.equal(results.workspaceSize(0), 0x123456789, "workspaceSize offset (HEURISTIC_WORKSPACE_OFFSET)");
    assert.equal(results.state(0), 7, "state offset (HEURISTIC_STATE_OFFSET)");
    assert.equal(results.wavesCount(0), 1.5, "wavesCount offset (HEURISTIC_WAVES_OFFSET)");
    assert.equal(results.algoAddress(0), results.base, "algo at offset 0");
    assert.equal(out.values.get("sizeof(cublasLtMatmulAlgo_t)"), 64, "cublasLtMatmulAlgo_t is uint64_t data[8]");
  });
});
