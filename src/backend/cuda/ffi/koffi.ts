// koffi is loaded lazily: its native part comes from an optional dependency
// (@koromix/koffi-<platform>), and a missing one must not crash a process that
// only wants the CPU backend.
import { createRequire } from "node:module";

export type Koffi = typeof import("koffi");
export type LibraryHandle = import("koffi").LibraryHandle;

let cached: Koffi | undefined;
let loadError: Error | undefined;

/** The koffi module, or a thrown Error saying which native package is missing and how to get it. */
export function koffi(): Koffi {
  if (cached) return cached;
  if (loadError) throw loadError;
  try {
    cached = createRequire(import.meta.url)("koffi") as Koffi;
    return cached;
  } catch (err) {
    const pkg = `@koromix/koffi-${process.platform}-${process.arch}`;
    loadError = new Error(
      `cannot load koffi, the FFI library used to call CUDA (${(err as Error).message}); ` +
        `expected its native package ${pkg} in node_modules: reinstall with \`npm ci\` (optional dependencies included)`,
      { cause: err },
    );
    throw loadError;
  }
}

/**
 * Binds one C function. `T` is the TypeScript shape the caller promises; koffi checks
 * argument conversions, not that the prototype matches the library (a wrong one crashes).
 */
export function bindFunction<T>(lib: LibraryHandle, libraryPath: string, symbol: string, result: string, args: string[]): T {
  try {
    return lib.func(symbol, result, args) as unknown as T;
  } catch (err) {
    throw new Error(`${libraryPath} has no usable symbol ${symbol} (${(err as Error).message}); the library is older than expected`, {
      cause: err,
    });
  }
}

/** Binds the first symbol of `symbols` that the library exports (newer versioned entry points first). */
export function bindFirst<T>(
  lib: LibraryHandle,
  libraryPath: string,
  symbols: string[],
  result: string,
  args: string[],
): { fn: T; symbol: string } {
  for (const symbol of symbols) {
    try {
      return { fn: lib.func(symbol, result, args) as unknown as T, symbol };
    } catch {
      // try the next, older name
    }
  }
  throw new Error(`${libraryPath} exports none of ${symbols.join(", ")}; the library is older than expected`);
}

/** Reads a NUL-terminated C string at a native address (null for a NULL pointer). */
export function readCString(address: bigint | null): string | null {
  if (address === null || address === 0n) return null;
  return koffi().decode.string(address);
}
