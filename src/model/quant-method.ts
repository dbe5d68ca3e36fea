/**
 * How a checkpoint's matrices become the stored weights of Linear layers (vLLM's
 * QuantizeMethodBase): as stored (GGUF block formats stay quantized), converted to a dense dtype
 * (--dtype), or quantized at load to INT8 or FP8 e4m3 with one scale per output channel
 * (--quantization). Embedding tables and the LM head are never quantized at load, as in vLLM.
 */
import { type DType, elementType, isFloatType } from "../backend/dtype.js";

export type QuantizationName = "int8" | "fp8";
export const QUANTIZATIONS: readonly QuantizationName[] = ["int8", "fp8"];

export interface QuantMethod {
  readonly name: "none" | QuantizationName;
  /** The stored element type of a matrix kept as `file` in the checkpoint. */
  storedDType(file: DType, label: string): DType;
  /** The stored element type of the embedding table and the LM head. */
  tableDType(file: DType): DType;
  /** Whether weights of `dtype` carry a per-channel scale tensor. */
  scaled(dtype: DType): boolean;
}

const scaled = (dtype: DType) => elementType(dtype).kind === "channel";

export function parseQuantization(name: string, where: string): QuantizationName {
  const n = name.toLowerCase();
  if (n === "int8" || n === "fp8") return n;
  throw new RangeError(`${where}: unsupported quantization "${name}"; expected one of ${QUANTIZATIONS.join(", ")}`);
}

/** The backend's choice of stored type for what it has no kernels for (BackendCapabilities.weightDType). */
export type BackendWeightDType = (file: DType, use: "matrix" | "table") => DType;

export function quantMethod(opts: { dtype?: DType; quantization?: QuantizationName; backendDType?: BackendWeightDType }): QuantMethod {
  const own = opts.backendDType ?? ((file: DType) => file);
  const table = (file: DType) => (opts.dtype && isFloatType(opts.dtype) ? opts.dtype : own(file, "table"));
  if (!opts.quantization) {
    return { name: "none", storedDType: (file) => opts.dtype ?? own(file, "matrix"), tableDType: table, scaled };
  }
  const target: DType = opts.quantization === "int8" ? "int8" : "fp8_e4m3";
  if (own(target, "matrix") !== target)
    throw new RangeError(`--quantization ${opts.quantization}: this backend has no ${target} matrix kernels yet`);
  return { name: opts.quantization, storedDType: () => target, tableDType: table, scaled };
}
