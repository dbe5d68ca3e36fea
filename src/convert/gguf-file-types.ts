/**
 * GGUF output types (`tokamak quantize --type`) and which element type each tensor gets, following
 * llama.cpp's llama-quantize: a file type names a base type for the matrices, and the mixes
 * (Q4_K_M, Q5_K_M) give more bits to the tensors that hurt most when quantized — the LM head,
 * and attn_v and ffn_down in the first and last eighth of the layers and every third one between.
 * A matrix whose rows are not whole blocks of the chosen type falls back the way llama.cpp does
 * (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, then F16), so tiny models quantize too.
 */
import type { DType } from "../backend/dtype.js";
import { elementType } from "../backend/dtype.js";

export interface GgufFileType {
  name: string;
  /** llama.cpp's llama_ftype, written as general.file_type. */
  fileType: number;
  /** The matrices' type. */
  base: DType;
  /** The Q6_K-upgraded tensors of the _M mixes. */
  mix: boolean;
}

const FILE_TYPES: readonly GgufFileType[] = [
  { name: "f32", fileType: 0, base: "f32", mix: false },
  { name: "f16", fileType: 1, base: "f16", mix: false },
  { name: "bf16", fileType: 32, base: "bf16", mix: false },
  { name: "q4_0", fileType: 2, base: "q4_0", mix: false },
  { name: "q4_1", fileType: 3, base: "q4_1", mix: false },
  { name: "q8_0", fileType: 7, base: "q8_0", mix: false },
  { name: "q5_0", fileType: 8, base: "q5_0", mix: false },
  { name: "q5_1", fileType: 9, base: "q5_1", mix: false },
  { name: "q4_k", fileType: 14, base: "q4_k", mix: false },
  { name: "q4_k_s", fileType: 14, base: "q4_k", mix: false },
  { name: "q4_k_m", fileType: 15, base: "q4_k", mix: true },
  { name: "q5_k", fileType: 16, base: "q5_k", mix: false },
  { name: "q5_k_s", fileType: 16, base: "q5_k", mix: false },
  { name: "q5_k_m", fileType: 17, base: "q5_k", mix: true },
  { name: "q6_k", fileType: 18, base: "q6_k", mix: false },
];

export const GGUF_FILE_TYPE_NAMES: readonly string[] = FILE_TYPES.map((t) => t.name);

export function ggufFileType(name: string): GgufFileType {
  const t = FILE_TYPES.find((f) => f.name === name.toLowerCase());
  if (!t) throw new RangeError(`unknown GGUF type "${name}"; expected one of ${GGUF_FILE_TYPE_NAMES.join(", ")}`);
  return t;
}

/** llama.cpp's use_more_bits (integer division, as in C): the first and last eighth of the layers, and every third layer between. */
export function useMoreBits(layer: number, layers: number): boolean {
  const eighth = Math.floor(layers / 8);
  return layer < eighth || layer >= Math.floor((7 * layers) / 8) || (layer - eighth) % 3 === 2;
}

const FALLBACK: Partial<Record<DType, DType>> = {
  q4_k: "q5_0",
  q5_k: "q5_1",
  q6_k: "q8_0",
  q4_0: "f16",
  q4_1: "f16",
  q5_0: "f16",
  q5_1: "f16",
  q8_0: "f16",
};

/** The first of `want` and its fallbacks whose blocks fit rows of `cols` elements. */
function fitting(want: DType, cols: number): DType {
  let t: DType | undefined = want;
  while (t && cols % elementType(t).blockSize !== 0) t = FALLBACK[t];
  return t ?? "f16";
}

/**
 * The element type of one tensor (GGUF name, row-major shape) in a file of type `ft`;
 * `moreBits`: the tensor's layer is one that the mixes upgrade (useMoreBits). Vectors stay F32.
 */
export function ggufTensorType(
  ft: GgufFileType,
  name: string,
  shape: readonly number[],
  moreBits: boolean,
  tiedEmbeddings: boolean,
): DType {
  if (shape.length < 2) return "f32";
  const cols = shape[shape.length - 1]!;
  if (elementType(ft.base).kind === "float") return ft.base;
  const isHead = name === "output.weight" || (tiedEmbeddings && name === "token_embd.weight");
  let want = ft.base;
  if (isHead) {
    if (ft.base !== "q8_0") want = "q6_k";
  } else if (ft.mix) {
    if (moreBits && /^blk\.\d+\.(attn_v|ffn_down)\.weight$/.test(name)) want = "q6_k";
  }
  return fitting(want, cols);
}
