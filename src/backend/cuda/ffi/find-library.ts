// Finds the CUDA shared libraries where users actually have them: the driver's
// libcuda.so.1 from the system, NVRTC and cuBLASLt from a CUDA toolkit or from
// the nvidia-* wheels of a Python environment (PyTorch installs those).
import { existsSync, readdirSync, realpathSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { basename, dirname, join } from "node:path";
import { koffi, type LibraryHandle } from "./koffi.js";

export type CudaLibrary = "cuda" | "nvrtc" | "cublasLt";

/** File names tried in each folder, preferred first (newest major version first). */
export const LIBRARY_FILE_NAMES: Readonly<Record<CudaLibrary, readonly string[]>> = {
  cuda: ["libcuda.so.1", "libcuda.so"],
  nvrtc: ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"],
  cublasLt: ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so"],
};

const HOW_TO_FIX: Readonly<Record<CudaLibrary, string>> = {
  cuda:
    "install the NVIDIA driver (it provides libcuda.so.1; `nvidia-smi` should then work), " +
    "or add the folder that holds libcuda.so.1 to LD_LIBRARY_PATH",
  nvrtc:
    "install NVRTC with `pip install nvidia-cuda-nvrtc-cu12` (CUDA 12) or `pip install nvidia-cuda-nvrtc` (CUDA 13), " +
    "or install the CUDA toolkit, or add the folder that holds libnvrtc.so.* to LD_LIBRARY_PATH",
  cublasLt:
    "install cuBLAS with `pip install nvidia-cublas-cu12` (CUDA 12) or `pip install nvidia-cublas` (CUDA 13), " +
    "or install the CUDA toolkit, or add the folder that holds libcublasLt.so.* to LD_LIBRARY_PATH",
};

export interface SearchOptions {
  /** Environment to read LD_LIBRARY_PATH, CUDA_HOME, CUDA_PATH, VIRTUAL_ENV, CONDA_PREFIX from (default: process.env). */
  env?: NodeJS.ProcessEnv;
  /** Home folder for ~/.local and ~/.pyenv (default: os.homedir()). */
  home?: string;
  /** Search exactly these folders instead of the default list (tests, or an explicit user setting). */
  dirs?: readonly string[];
}

export interface SearchFolder {
  dir: string;
  /** Why this folder is searched: "LD_LIBRARY_PATH", "$CUDA_HOME", "CUDA toolkit", "Python package", ... */
  source: string;
}

export interface SearchPath {
  /** Existing folders, in search order, without duplicates (symlinked aliases removed). */
  folders: SearchFolder[];
  /** Patterns and variables that gave no existing folder, so an error can say they were tried. */
  absent: string[];
}

export interface FoundLibrary {
  library: CudaLibrary;
  path: string;
  dir: string;
  fileName: string;
}

/** No file of a library was found; the message lists the names looked for, every folder searched and the fix. */
export class LibraryNotFoundError extends Error {
  constructor(
    readonly library: CudaLibrary | "nvrtc-builtins",
    readonly fileNames: readonly string[],
    readonly searched: readonly SearchFolder[],
    readonly absent: readonly string[],
    /** What the user can do about it. */
    readonly fix: string,
  ) {
    const folders = searched.length > 0 ? searched.map((f) => `  ${f.dir} (${f.source})`).join("\n") : "  (no folder exists)";
    const tried = absent.length > 0 ? `\nalso tried, but nothing there: ${absent.join(", ")}` : "";
    super(`no ${fileNames[0]} found (looked for ${fileNames.join(", ")}) in:\n${folders}${tried}\nto fix: ${fix}`);
    this.name = "LibraryNotFoundError";
  }

  /** The same on one line, for a log line or a device-selection reason. */
  get summary(): string {
    const dirs = this.searched.map((f) => f.dir).join(", ") || "(no folder exists)";
    return `no ${this.fileNames[0]} found (looked for ${this.fileNames.join(", ")}) in: ${dirs}; to fix: ${this.fix}`;
  }
}

/** A library file exists but the dynamic loader refused it (not an ELF, wrong architecture, missing dependency). */
export class LibraryLoadError extends Error {
  constructor(
    readonly path: string,
    readonly loaderMessage: string,
  ) {
    super(
      `cannot load ${path}: ${loaderMessage}; expected a shared library for ${process.platform}-${process.arch} ` +
        `(is the file truncated, a placeholder, or built for another architecture?)`,
    );
    this.name = "LibraryLoadError";
  }
}

/** The folders searched, in order. Environment variables first, so a user's own setting wins. */
export function librarySearchPath(options: SearchOptions = {}): SearchPath {
  if (options.dirs) return explicitFolders(options.dirs);
  const env = options.env ?? process.env;
  const home = options.home ?? homedir();
  const candidates: { pattern: string; source: string }[] = [];
  const add = (source: string, ...patterns: string[]): void => {
    for (const pattern of patterns) candidates.push({ pattern, source });
  };
  const absent: string[] = [];

  const ldPath = (env.LD_LIBRARY_PATH ?? "").split(":").filter((d) => d.length > 0);
  if (ldPath.length === 0) absent.push("$LD_LIBRARY_PATH (unset)");
  add("LD_LIBRARY_PATH", ...ldPath);
  for (const name of ["CUDA_HOME", "CUDA_PATH"]) {
    const root = env[name];
    if (root) add(`$${name}`, `${root}/lib64`, `${root}/lib`, `${root}/targets/*/lib`);
    else absent.push(`$${name} (unset)`);
  }
  if (env.VIRTUAL_ENV) add("$VIRTUAL_ENV", `${env.VIRTUAL_ENV}/lib/python3*/site-packages/nvidia/*/lib`);
  if (env.CONDA_PREFIX) add("$CONDA_PREFIX", `${env.CONDA_PREFIX}/lib`, `${env.CONDA_PREFIX}/lib/python3*/site-packages/nvidia/*/lib`);

  const triple = process.arch === "arm64" ? "aarch64-linux-gnu" : "x86_64-linux-gnu";
  add("system", `/usr/lib/${triple}`, "/usr/lib64", "/usr/lib/wsl/lib", "/usr/lib");
  add(
    "CUDA toolkit",
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/targets/*/lib",
    "/usr/local/cuda-*/lib64",
    "/usr/local/cuda-*/targets/*/lib",
    "/opt/cuda/lib64",
  );
  add(
    "Python package",
    `${home}/.local/lib/python3*/site-packages/nvidia/*/lib`,
    "/usr/local/lib/python3*/dist-packages/nvidia/*/lib",
    "/usr/local/lib/python3*/site-packages/nvidia/*/lib",
    "/usr/lib/python3*/site-packages/nvidia/*/lib",
    "/usr/lib/python3/dist-packages/nvidia/*/lib",
    `${home}/.pyenv/versions/*/lib/python3*/site-packages/nvidia/*/lib`,
    "/opt/conda/lib/python3*/site-packages/nvidia/*/lib",
  );

  const folders: SearchFolder[] = [];
  const seen = new Set<string>();
  for (const { pattern, source } of candidates) {
    const dirs = expandPattern(pattern);
    if (dirs.length === 0) absent.push(pattern);
    for (const dir of dirs) {
      const real = realpathOrSelf(dir);
      if (seen.has(real)) continue;
      seen.add(real);
      folders.push({ dir, source });
    }
  }
  return { folders, absent };
}

/** The first file of `library` in the search path; throws LibraryNotFoundError when there is none. */
export function findLibrary(library: CudaLibrary, options: SearchOptions = {}): FoundLibrary {
  const fileNames = LIBRARY_FILE_NAMES[library];
  const { folders, absent } = librarySearchPath(options);
  // Folder-major order, like the dynamic loader: an earlier folder (LD_LIBRARY_PATH) beats a newer version later on.
  for (const { dir } of folders) {
    for (const fileName of fileNames) {
      const path = join(dir, fileName);
      if (isFile(path)) return { library, path, dir, fileName };
    }
  }
  throw new LibraryNotFoundError(library, fileNames, folders, absent, HOW_TO_FIX[library]);
}

/**
 * NVRTC loads libnvrtc-builtins.so.<major>.<minor> with dlopen by bare name at compile time, which fails for
 * wheels (no RPATH, folder not on LD_LIBRARY_PATH). Finding it here lets us load it first, globally.
 */
export function findNvrtcBuiltins(nvrtcPath: string, major: number, minor: number, options: SearchOptions = {}): string {
  const exact = `libnvrtc-builtins.so.${major}.${minor}`;
  const dir = dirname(nvrtcPath);
  const beside = join(dir, exact);
  if (isFile(beside)) return beside;
  // Some distributions ship only an unversioned or differently versioned file beside NVRTC.
  const others = safeReaddir(dir)
    .filter((name) => name.startsWith("libnvrtc-builtins.so") && !name.includes(".alt."))
    .sort(newestFirst);
  if (others.length > 0) return join(dir, others[0]!);
  const { folders, absent } = librarySearchPath(options);
  for (const folder of folders) {
    const path = join(folder.dir, exact);
    if (isFile(path)) return path;
  }
  throw new LibraryNotFoundError(
    "nvrtc-builtins",
    [exact, "libnvrtc-builtins.so.*"],
    [{ dir, source: `beside ${basename(nvrtcPath)}` }, ...folders],
    absent,
    `NVRTC at ${nvrtcPath} needs ${exact} in the same folder; reinstall the package that provided NVRTC ` +
      `(its builtins library is part of it), or add the folder holding ${exact} to LD_LIBRARY_PATH`,
  );
}

/** Opens a found library with koffi; a refusal by the loader becomes a LibraryLoadError naming the file. */
export function openLibrary(path: string, options: { global?: boolean } = {}): LibraryHandle {
  const ffi = koffi();
  try {
    return options.global ? ffi.load(path, { global: true }) : ffi.load(path);
  } catch (err) {
    throw new LibraryLoadError(path, (err as Error).message);
  }
}

function explicitFolders(dirs: readonly string[]): SearchPath {
  const folders: SearchFolder[] = [];
  const absent: string[] = [];
  for (const dir of dirs) {
    if (isDirectory(dir)) folders.push({ dir, source: "given" });
    else absent.push(dir);
  }
  return { folders, absent };
}

/** Expands `*` in any path segment (no `**`); newest-looking names first (python3.12 before python3.9). */
export function expandPattern(pattern: string): string[] {
  if (!pattern.includes("*")) return isDirectory(pattern) ? [pattern] : [];
  const segments = pattern.split("/");
  let paths = [segments[0] === "" ? "/" : segments[0]!];
  for (const segment of segments.slice(1)) {
    if (segment === "") continue;
    const next: string[] = [];
    for (const base of paths) {
      if (!segment.includes("*")) {
        next.push(join(base, segment));
        continue;
      }
      const re = wildcardRegExp(segment);
      for (const name of safeReaddir(base)
        .filter((n) => re.test(n))
        .sort(newestFirst))
        next.push(join(base, name));
    }
    paths = next;
  }
  return paths.filter(isDirectory);
}

function wildcardRegExp(segment: string): RegExp {
  const escaped = segment.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*");
  return new RegExp(`^${escaped}$`);
}

function newestFirst(a: string, b: string): number {
  return b.localeCompare(a, "en", { numeric: true });
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function isFile(path: string): boolean {
  try {
    return existsSync(path) && statSync(path).isFile();
  } catch {
    return false;
  }
}

function realpathOrSelf(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}
