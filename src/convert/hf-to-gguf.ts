/**
 * Hugging Face model folder → GGUF, for the Llama family (Llama, Mistral, Qwen2, Qwen3) and
 * byte-level BPE tokenizers, following the conventions of llama.cpp's convert_hf_to_gguf.py so
 * that llama.cpp (and tools built on it) load the result:
 *
 * - tensors renamed to llama.cpp's names (token_embd, blk.N.attn_q, ...), dims in ggml order;
 * - for the "llama" architecture (Llama, Mistral) the rows of Q and K (and their biases) are
 *   permuted per head from Hugging Face's rotate-half RoPE layout to the interleaved pairs
 *   llama.cpp's normal RoPE uses; Qwen2/Qwen3 run NEOX RoPE in llama.cpp and keep HF's layout;
 * - llama3 rope scaling becomes a `rope_freqs.weight` tensor of per-frequency divisors;
 * - 1-D tensors (norms, biases) stay F32, matrices are written as the chosen output type;
 * - the tokenizer becomes tokenizer.ggml.* metadata with exactly one token per embedding row
 *   (padded with [PADn] when the model has more rows than the tokenizer has tokens; cut when it
 *   has fewer, as tiny test models do, and then merges that need a cut token are dropped).
 */
import { existsSync, readFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { decodeFloats, type DenseDType, denseDType, elementType } from "../backend/dtype.js";
import { encodeMatrix } from "../quant/convert.js";
import { type GgufFileType, ggufFileType, ggufTensorType, useMoreBits } from "./gguf-file-types.js";
import { loadConfig, type ModelConfig } from "../model/config.js";
import { GGUF_LAYER_TENSORS } from "../model/gguf-names.js";
import { declaredLlamaTensors } from "../model/weights.js";
import {
  encodeGgmlFloats,
  GGML_F32,
  ggmlType,
  GGUF_DEFAULT_ALIGNMENT,
  type GgufMetadata,
  type GgufTensorToWrite,
  gv,
  writeGguf,
} from "../formats/gguf.js";
import { FormatError, SafetensorsCheckpoint, type TensorInfo } from "../formats/safetensors.js";

/** f32, f16, bf16, a quantized GGUF type (q8_0, q4_k_m, ...: see gguf-file-types.ts) or auto (as stored). */
export type GgufOutType = string;

export interface ConvertOptions {
  /** Element type of the matrices: f32, f16, bf16, a GGUF quantized type, or auto (as stored in the checkpoint). Default auto. */
  outType?: GgufOutType;
  /** general.name; default: the folder's name. */
  name?: string;
  /** tokenizer.ggml.pre, when the pre-tokenizer is not one this converter recognises. */
  pre?: string;
}

export interface ConvertResult {
  path: string;
  /** The GGUF architecture name: llama, qwen2 or qwen3. */
  architecture: string;
  outType: string;
  tensorCount: number;
  /** How many tensors were written in each element type. */
  tensorTypes: Record<string, number>;
  /** Tokens written (= embedding rows). */
  vocabSize: number;
  /** Tokens of the tokenizer left out because the model has fewer embedding rows. */
  droppedTokens: number;
  /** BPE merges left out because they need a token that was left out. */
  droppedMerges: number;
  /** Things llama.cpp will do differently from the Hugging Face model. */
  warnings: string[];
}

const GGUF_ARCH: Record<ModelConfig["architecture"], string> = {
  LlamaForCausalLM: "llama",
  MistralForCausalLM: "llama",
  Qwen2ForCausalLM: "qwen2",
  Qwen3ForCausalLM: "qwen3",
};

/** llama.cpp token types. */
const TOKEN_NORMAL = 1;
const TOKEN_CONTROL = 3;
const TOKEN_USER_DEFINED = 4;
const TOKEN_UNUSED = 5;

/** Convert the Hugging Face model in `modelDir` to a GGUF file at `outPath`. */
export function convertHfToGguf(modelDir: string, outPath: string, opts: ConvertOptions = {}): ConvertResult {
  const config = loadConfig(modelDir);
  const arch = GGUF_ARCH[config.architecture];
  const warnings: string[] = [];
  const ckpt = new SafetensorsCheckpoint(modelDir);
  try {
    const embed = ckpt.get("model.embed_tokens.weight");
    if (!embed) throw new FormatError(`${modelDir}: the checkpoint has no "model.embed_tokens.weight"`);
    const nVocab = embed.shape[0]!;
    if (embed.shape.length !== 2 || embed.shape[1] !== config.hiddenSize) {
      throw new FormatError(`${modelDir}: model.embed_tokens.weight has shape [${embed.shape}]; expected [vocab, ${config.hiddenSize}]`);
    }
    if (nVocab !== config.vocabSize) {
      throw new FormatError(
        `${modelDir}: model.embed_tokens.weight has ${nVocab} rows but config.json says vocab_size ${config.vocabSize}`,
      );
    }
    const outType = resolveOutType(opts.outType ?? "auto", denseDType(embed.dtype, `${modelDir}: model.embed_tokens.weight`));

    const metadata: GgufMetadata = new Map();
    metadata.set("general.architecture", gv.str(arch));
    metadata.set("general.type", gv.str("model"));
    metadata.set("general.name", gv.str(opts.name ?? basename(resolve(modelDir))));
    metadata.set("general.alignment", gv.u32(GGUF_DEFAULT_ALIGNMENT));
    addModelMetadata(metadata, arch, config, nVocab, warnings);
    metadata.set("general.file_type", gv.u32(outType.fileType));
    if (elementType(outType.base).kind === "block") metadata.set("general.quantization_version", gv.u32(2));
    const vocab = addTokenizerMetadata(metadata, modelDir, config, nVocab, arch, opts.pre);

    const tensors = planTensors(ckpt, config, arch, outType, modelDir);
    const tensorTypes: Record<string, number> = {};
    for (const t of tensors) {
      const name = ggmlType(t.type).name;
      tensorTypes[name] = (tensorTypes[name] ?? 0) + 1;
    }
    writeGguf(outPath, metadata, tensors);
    return {
      path: outPath,
      architecture: arch,
      outType: outType.name,
      tensorCount: tensors.length,
      tensorTypes,
      vocabSize: nVocab,
      droppedTokens: vocab.droppedTokens,
      droppedMerges: vocab.droppedMerges,
      warnings,
    };
  } finally {
    ckpt.close();
  }
}

function resolveOutType(outType: GgufOutType, stored: DenseDType): GgufFileType {
  if (outType !== "auto") return ggufFileType(outType);
  if (stored === "i32") throw new FormatError(`the embedding is stored as i32; expected a float type`);
  return ggufFileType(stored);
}

// ---------------------------------------------------------------------------
// Hyper-parameters

function addModelMetadata(m: GgufMetadata, arch: string, c: ModelConfig, nVocab: number, warnings: string[]): void {
  m.set(`${arch}.vocab_size`, gv.u32(nVocab));
  m.set(`${arch}.context_length`, gv.u32(c.maxPositionEmbeddings));
  m.set(`${arch}.embedding_length`, gv.u32(c.hiddenSize));
  m.set(`${arch}.block_count`, gv.u32(c.numLayers));
  m.set(`${arch}.feed_forward_length`, gv.u32(c.intermediateSize));
  m.set(`${arch}.attention.head_count`, gv.u32(c.numHeads));
  m.set(`${arch}.attention.head_count_kv`, gv.u32(c.numKvHeads));
  m.set(`${arch}.attention.key_length`, gv.u32(c.headDim));
  m.set(`${arch}.attention.value_length`, gv.u32(c.headDim));
  m.set(`${arch}.rope.dimension_count`, gv.u32(c.headDim));
  m.set(`${arch}.rope.freq_base`, gv.f32(c.ropeTheta));
  m.set(`${arch}.attention.layer_norm_rms_epsilon`, gv.f32(c.rmsNormEps));
  const rs = c.ropeScaling;
  if (rs.type === "linear") {
    m.set(`${arch}.rope.scaling.type`, gv.str("linear"));
    m.set(`${arch}.rope.scaling.factor`, gv.f32(rs.factor));
  } else if (rs.type === "llama3" && arch !== "llama") {
    throw new FormatError(
      `${c.architecture}: llama3 rope scaling becomes a rope_freqs tensor that only llama.cpp's "llama" architecture reads; expected LlamaForCausalLM`,
    );
  }
  if (c.slidingWindow !== null && c.slidingWindow < c.maxPositionEmbeddings) {
    warnings.push(
      `sliding_window ${c.slidingWindow} is not written: llama.cpp's "${arch}" architecture attends to the whole context, so outputs differ beyond ${c.slidingWindow} tokens`,
    );
  }
}

/** Per-frequency RoPE divisors for llama3 scaling, as llama.cpp's rope_freqs tensor wants them. */
export function llama3RopeFactors(c: ModelConfig): Float32Array {
  const rs = c.ropeScaling;
  if (rs.type !== "llama3") throw new Error("internal: llama3RopeFactors needs llama3 rope scaling");
  const half = c.headDim / 2;
  const out = new Float32Array(half);
  const lowWavelen = rs.originalMaxPositions / rs.lowFreqFactor;
  const highWavelen = rs.originalMaxPositions / rs.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const freq = 1 / Math.pow(c.ropeTheta, (2 * i) / c.headDim);
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = rs.factor;
    else {
      // Between the two: interpolate the scaled frequency, then express it as a divisor of the original one.
      const smooth = (rs.originalMaxPositions / wavelen - rs.lowFreqFactor) / (rs.highFreqFactor - rs.lowFreqFactor);
      out[i] = 1 / ((1 - smooth) / rs.factor + smooth);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Tensors

/** The GGUF name of a Hugging Face tensor; null for tensors llama.cpp does not use; throws for unknown ones. */
function ggufTensorName(hfName: string, c: ModelConfig, modelDir: string): string | null {
  if (hfName.endsWith(".rotary_emb.inv_freq")) return null; // recomputed from the config
  if (hfName === "model.embed_tokens.weight") return "token_embd.weight";
  if (hfName === "model.norm.weight") return "output_norm.weight";
  if (hfName === "lm_head.weight") return c.tieWordEmbeddings ? null : "output.weight";
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hfName);
  const mapped = m ? GGUF_LAYER_TENSORS[m[2]!] : undefined;
  if (!m || !mapped) throw new FormatError(`${modelDir}: tensor "${hfName}" has no GGUF equivalent in this converter`);
  const layer = Number(m[1]);
  if (layer >= c.numLayers)
    throw new FormatError(`${modelDir}: tensor "${hfName}" is for layer ${layer}, but num_hidden_layers is ${c.numLayers}`);
  return `blk.${layer}.${mapped}`;
}

function planTensors(
  ckpt: SafetensorsCheckpoint,
  c: ModelConfig,
  arch: string,
  outType: GgufFileType,
  modelDir: string,
): GgufTensorToWrite[] {
  // The architecture's declaration first: a checkpoint missing a tensor, or with a wrong shape, fails before anything is written.
  for (const d of declaredLlamaTensors(c)) {
    for (let l = 0; l < (d.perLayer ? c.numLayers : 1); l++) {
      const name = d.perLayer ? d.name.replace("model.layers.0.", `model.layers.${l}.`) : d.name;
      const info = ckpt.get(name);
      if (!info) throw new FormatError(`${modelDir}: tensor "${name}" is missing (expected shape [${d.shape}])`);
      if (info.shape.length !== d.shape.length || info.shape.some((x, i) => x !== d.shape[i])) {
        throw new FormatError(`${modelDir}: tensor "${name}" has shape [${info.shape}], expected [${d.shape}]`);
      }
    }
  }
  const out: GgufTensorToWrite[] = [];
  const order = (n: string) => (n === "token_embd.weight" ? 0 : n === "rope_freqs.weight" ? 1 : n.startsWith("blk.") ? 2 : 3);
  const planned: { name: string; info: TensorInfo }[] = [];
  for (const info of ckpt.tensors.values()) {
    const name = ggufTensorName(info.name, c, modelDir);
    if (name !== null) planned.push({ name, info });
  }
  if (!c.tieWordEmbeddings && !planned.some((p) => p.name === "output.weight")) {
    throw new FormatError(`${modelDir}: tie_word_embeddings is false but the checkpoint has no "lm_head.weight"`);
  }
  const layerIndex = (n: string) => (n.startsWith("blk.") ? Number(n.split(".")[1]) : -1);
  planned.sort((a, b) => order(a.name) - order(b.name) || layerIndex(a.name) - layerIndex(b.name));

  for (const { name, info } of planned) {
    const shape = info.shape;
    let permuteHeads = 0;
    if (arch === "llama" && /\.attn_[qk]\.(weight|bias)$/.test(name)) {
      permuteHeads = name.includes(".attn_q.") ? c.numHeads : c.numKvHeads;
      if (shape[0] !== permuteHeads * c.headDim) {
        throw new FormatError(
          `${modelDir}: ${info.name} has ${shape[0]} rows; expected ${permuteHeads} heads × head_dim ${c.headDim} = ${permuteHeads * c.headDim}`,
        );
      }
    }
    const layer = /^blk\.(\d+)\./.exec(name);
    const moreBits = layer !== null && useMoreBits(Number(layer[1]), c.numLayers);
    const dtype = ggufTensorType(outType, name, shape, moreBits, !planned.some((p) => p.name === "output.weight"));
    const type = elementType(dtype).ggmlType!;
    out.push({
      name,
      shape,
      type,
      data: () => {
        const bytes = new Uint8Array(info.byteLength);
        ckpt.readInto(info, bytes);
        let values = decodeFloats(
          bytes,
          denseDType(info.dtype, `${modelDir}: ${info.name} (FP8 checkpoints are served as they are, not converted)`),
          shape.reduce((a, b) => a * b, 1),
        );
        if (permuteHeads > 0) values = permuteForInterleavedRope(values, permuteHeads, shape[0]!, shape.length >= 2 ? shape[1]! : 1);
        const cols = shape[shape.length - 1]!;
        return encodeMatrix(values, values.length / cols, cols, dtype).data;
      },
    });
  }
  if (c.ropeScaling.type === "llama3") {
    const factors = llama3RopeFactors(c);
    out.splice(1, 0, { name: "rope_freqs.weight", shape: [factors.length], type: GGML_F32, data: encodeGgmlFloats(factors, GGML_F32) });
  }
  return out;
}

/**
 * Reorder the rows of a Q or K projection (or bias) within each head from Hugging Face's
 * rotate-half layout — the first half of a head's rows rotate with the second half — to
 * interleaved pairs (rows 2j and 2j+1 rotate together), which llama.cpp's normal RoPE expects:
 * new row 2j+i of a head is old row i·(headDim/2)+j.
 */
export function permuteForInterleavedRope(values: Float32Array, numHeads: number, rows: number, cols: number): Float32Array {
  const headDim = rows / numHeads;
  const half = headDim / 2;
  if (!Number.isInteger(half)) throw new RangeError(`cannot permute ${rows} rows into ${numHeads} heads of an even size`);
  const out = new Float32Array(values.length);
  for (let h = 0; h < numHeads; h++) {
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < half; j++) {
        const src = (h * headDim + i * half + j) * cols;
        const dst = (h * headDim + 2 * j + i) * cols;
        out.set(values.subarray(src, src + cols), dst);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Tokenizer

type Json = Record<string, unknown>;

function readJson(path: string, required: boolean): Json | undefined {
  if (!existsSync(path)) {
    if (required) throw new FormatError(`${path}: not found; the converter needs the Hugging Face tokenizer (tokenizer.json)`);
    return undefined;
  }
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new FormatError(`${path}: not valid JSON (${(err as Error).message})`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new FormatError(`${path}: expected a JSON object`);
  return v as Json;
}

/** Pre-tokenizer split patterns of known model families → llama.cpp's tokenizer.ggml.pre. */
const KNOWN_PRE_TOKENIZERS: Record<string, string> = {
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+":
    "qwen2",
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+":
    "llama-bpe",
};

function preTokenizerParts(pre: unknown): Json[] {
  if (typeof pre !== "object" || pre === null) return [];
  const p = pre as Json;
  if (p.type === "Sequence" && Array.isArray(p.pretokenizers)) return p.pretokenizers as Json[];
  return [p];
}

function detectPre(tok: Json, path: string): string {
  const parts = preTokenizerParts(tok.pre_tokenizer);
  const byteLevel = parts.find((p) => p.type === "ByteLevel");
  if (!byteLevel) {
    throw new FormatError(
      `${path}: the pre-tokenizer is not byte-level (${parts.map((p) => p.type).join(", ") || "none"}); this converter handles byte-level BPE tokenizers (GPT-2 style, as Qwen and Llama 3 use), not SentencePiece-style ones`,
    );
  }
  const splits = parts.filter((p) => p.type === "Split");
  if (splits.length === 0 && byteLevel.use_regex !== false) return "gpt2";
  const pattern = (splits[0]?.pattern as Json | undefined)?.Regex;
  const known = typeof pattern === "string" && splits.length === 1 ? KNOWN_PRE_TOKENIZERS[pattern] : undefined;
  if (!known) {
    throw new FormatError(
      `${path}: unrecognised pre-tokenizer split pattern ${JSON.stringify(pattern)}; known: Qwen2 ("qwen2") and Llama 3 ("llama-bpe"); pass the llama.cpp pre-tokenizer name explicitly (pre option) if you know it`,
    );
  }
  return known;
}

/** Added tokens that are not marked special but are control tokens by their spelling (<|...|>, <｜...｜>, <pad>, ...). */
function looksSpecial(text: string): boolean {
  if (["<pad>", "<mask>", "<2mass>", "[@BOS@]"].includes(text)) return true;
  if (text.startsWith("<|") && text.endsWith("|>")) return true;
  if (text.startsWith("<｜") && text.endsWith("｜>")) return true;
  return text.startsWith("<unused") && text.endsWith(">");
}

function tokenContent(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (typeof v === "object" && v !== null && typeof (v as Json).content === "string") return (v as Json).content as string;
  return undefined;
}

/** True when the tokenizer's post-processor puts a special token in front of a single sequence (a BOS). */
function postProcessorAddsBos(pp: unknown): boolean | undefined {
  if (typeof pp !== "object" || pp === null) return undefined;
  const p = pp as Json;
  if (p.type === "Sequence" && Array.isArray(p.processors)) {
    for (const q of p.processors) {
      const r = postProcessorAddsBos(q);
      if (r !== undefined) return r;
    }
    return undefined;
  }
  if (p.type === "TemplateProcessing" && Array.isArray(p.single)) {
    const first = p.single[0] as Json | undefined;
    return first !== undefined && "SpecialToken" in first;
  }
  return undefined;
}

function addTokenizerMetadata(
  m: GgufMetadata,
  modelDir: string,
  c: ModelConfig,
  nVocab: number,
  arch: string,
  preOverride: string | undefined,
): { droppedTokens: number; droppedMerges: number } {
  const tokPath = join(modelDir, "tokenizer.json");
  const tok = readJson(tokPath, true)!;
  const tokConfig = readJson(join(modelDir, "tokenizer_config.json"), false) ?? {};
  const model = tok.model as Json | undefined;
  if (!model || model.type !== "BPE") {
    throw new FormatError(`${tokPath}: tokenizer model type is ${JSON.stringify(model?.type)}; this converter handles "BPE" tokenizers`);
  }
  const pre = preOverride ?? detectPre(tok, tokPath);

  // id → text and type, over every id the tokenizer knows.
  const byId = new Map<number, { text: string; type: number }>();
  for (const [text, id] of Object.entries((model.vocab ?? {}) as Record<string, number>)) byId.set(id, { text, type: TOKEN_NORMAL });
  for (const a of (tok.added_tokens ?? []) as Json[]) {
    const text = a.content as string;
    byId.set(a.id as number, { text, type: a.special === true || looksSpecial(text) ? TOKEN_CONTROL : TOKEN_USER_DEFINED });
  }
  let tokenizerSize = 0;
  for (const id of byId.keys()) tokenizerSize = Math.max(tokenizerSize, id + 1);
  const tokens: string[] = new Array(nVocab);
  const types: number[] = new Array(nVocab);
  for (let id = 0; id < nVocab; id++) {
    const t = byId.get(id);
    tokens[id] = t ? t.text : `[PAD${id}]`;
    types[id] = t ? t.type : TOKEN_UNUSED;
  }
  const kept = new Set(tokens);
  const droppedTokens = Math.max(0, tokenizerSize - nVocab);

  const merges: string[] = [];
  let droppedMerges = 0;
  for (const raw of (model.merges ?? []) as unknown[]) {
    let a: string, b: string;
    if (Array.isArray(raw)) [a, b] = raw as [string, string];
    else {
      const s = raw as string;
      const sp = s.indexOf(" ", 1);
      a = s.slice(0, sp);
      b = s.slice(sp + 1);
    }
    if (kept.has(a) && kept.has(b) && kept.has(a + b)) merges.push(`${a} ${b}`);
    else droppedMerges++;
  }

  m.set("tokenizer.ggml.model", gv.str("gpt2"));
  m.set("tokenizer.ggml.pre", gv.str(pre));
  m.set("tokenizer.ggml.tokens", gv.arr("string", tokens));
  m.set("tokenizer.ggml.token_type", gv.arr("int32", types));
  m.set("tokenizer.ggml.merges", gv.arr("string", merges));

  // Special ids: tokenizer_config.json's tokens first, config.json's ids where it names none.
  const idOfText = new Map<string, number>();
  for (const [id, t] of byId) idOfText.set(t.text, id);
  const special = (key: "bos" | "eos" | "pad" | "unk"): number | undefined => {
    const text = tokenContent(tokConfig[`${key}_token`]);
    if (text !== undefined && idOfText.has(text)) return idOfText.get(text);
    if (key === "bos") return c.bosTokenId ?? undefined;
    if (key === "eos") return c.eosTokenIds[0];
    return undefined;
  };
  const keys = { bos: "bos_token_id", eos: "eos_token_id", pad: "padding_token_id", unk: "unknown_token_id" } as const;
  for (const [key, ggufKey] of Object.entries(keys) as ["bos" | "eos" | "pad" | "unk", string][]) {
    const id = special(key);
    // An id past the (cut) vocabulary would make llama.cpp warn and fall back to a default.
    if (id !== undefined && id < nVocab) m.set(`tokenizer.ggml.${ggufKey}`, gv.u32(id));
  }
  const addBos =
    arch === "qwen2" || arch === "qwen3"
      ? false
      : typeof tokConfig.add_bos_token === "boolean"
        ? tokConfig.add_bos_token
        : (postProcessorAddsBos(tok.post_processor) ?? false);
  m.set("tokenizer.ggml.add_bos_token", gv.bool(addBos));
  if (typeof tokConfig.add_eos_token === "boolean") m.set("tokenizer.ggml.add_eos_token", gv.bool(tokConfig.add_eos_token));

  const jinja = join(modelDir, "chat_template.jinja");
  const template = existsSync(jinja) ? readFileSync(jinja, "utf8") : tokConfig.chat_template;
  if (typeof template === "string") m.set("tokenizer.chat_template", gv.str(template));
  else if (Array.isArray(template)) {
    for (const t of template as Json[]) {
      if (typeof t.name !== "string" || typeof t.template !== "string") continue;
      m.set(t.name === "default" ? "tokenizer.chat_template" : `tokenizer.chat_template.${t.name}`, gv.str(t.template));
    }
  }
  return { droppedTokens, droppedMerges };
}
