// One error type for the three CUDA libraries: every failing call names the C
// function, the status name and its description, e.g.
// "cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)".

export type CudaApi = "driver" | "nvrtc" | "cublasLt";

/** Looks up a status code's enum name and description (from the library itself, or a fake in tests). */
export interface StatusNames {
  name(code: number): string | null;
  describe(code: number): string | null;
}

export class CudaError extends Error {
  constructor(
    readonly api: CudaApi,
    /** The C function that failed, with its versioned symbol name (cuMemAlloc_v2). */
    readonly fn: string,
    readonly code: number,
    /** Enum name such as CUDA_ERROR_OUT_OF_MEMORY, or "status N" when the library does not know it. */
    readonly codeName: string,
    message: string,
  ) {
    super(message);
    this.name = "CudaError";
  }
}

/** Builds the error for a non-zero status; `context` says what was being done ("allocating 2.0 GiB"). */
export function cudaError(api: CudaApi, fn: string, code: number, names: StatusNames, context?: string): CudaError {
  const name = safeLookup(() => names.name(code)) ?? `status ${code}`;
  const description = safeLookup(() => names.describe(code));
  const detail = description && description !== name ? ` (${description})` : "";
  const where = context ? ` while ${context}` : "";
  return new CudaError(api, fn, code, name, `${fn} failed: ${name}${detail}${where}`);
}

// The lookup functions are native calls too; an error while reporting an error must not hide the first one.
function safeLookup(fn: () => string | null): string | null {
  try {
    return fn();
  } catch {
    return null;
  }
}

/** Human-readable byte counts for error messages ("2.0 GiB"). */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}
