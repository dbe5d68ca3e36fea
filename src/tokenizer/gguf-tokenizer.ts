/**
 * A Hugging Face tokenizer from a GGUF file's `tokenizer.ggml.*` metadata: a tokenizer.json and the
 * part of a tokenizer_config.json that Tokenizer reads, as objects (Tokenizer.fromGguf builds it).
 * The reverse of src/convert/hf-to-gguf.ts. What each key means is what llama.cpp's llama-vocab.cpp
 * makes of it, written the way the models' own tokenizer.json files write it:
 *
 * - "gpt2", byte-level BPE (Qwen2/Qwen3, Llama 3, SmolLM, GPT-2, DeepSeek): tokens, token types and
 *   merges. `tokenizer.ggml.pre` picks the pre-tokenizer from llama.cpp's table: its regexes, each a
 *   Split(Isolated) in turn, then ByteLevel without a regex of its own, as Qwen2's and Llama 3's
 *   tokenizer.json do (GPT-2's own regex stays inside ByteLevel, as GPT-2's file has it). Control
 *   tokens become special added tokens, user-defined ones plain added tokens.
 * - "llama", SentencePiece BPE (Llama 2, Mistral, TinyLlama): tokens, scores and token types. An
 *   HF BPE model with byte fallback whose merges come from the scores as Transformers' SentencePiece
 *   converter derives them, Llama 2's Prepend("▁") + Replace(" ", "▁") normalizer (which, like
 *   llama.cpp, puts a "▁" before the text after every special token) and its
 *   Replace / ByteFallback / Fuse / Strip decoder.
 *
 * Where llama.cpp and Hugging Face part, this follows Hugging Face, the ids Transformers and vLLM
 * produce: the split regexes are the models' own (llama.cpp runs hand-adapted ones, e.g. `'[sS]`
 * for `(?i:'s)`, over its own Unicode tables); Qwen's tokenizer.json NFC-normalizes the text and so
 * does this, where llama.cpp does not normalize at all (their ids differ on decomposed accents).
 */
import type { GgufMetadata, GgufValue } from "../formats/gguf.js";
import { TokenizerError } from "./tokenizer-error.js";

type JsonObject = Record<string, unknown>;

export interface GgufTokenizerJson {
  /** A tokenizer.json (Hugging Face tokenizers format). */
  tokenizer: JsonObject;
  /**
   * A tokenizer_config.json equivalent: bos/eos/pad/unk tokens (their text), add_bos_token,
   * add_eos_token, clean_up_tokenization_spaces, and chat_template from tokenizer.chat_template.
   */
  config: JsonObject;
  /**
   * Ids that end a generation, as llama.cpp counts them: tokenizer.ggml.eos_token_id, eot_token_id,
   * eom_token_id, then tokens spelled like an end of turn (<|im_end|>, <|eot_id|>, <|endoftext|>, ...).
   */
  eosTokenIds: number[];
}

/** llama.cpp's token types (tokenizer.ggml.token_type). */
const TYPE_NORMAL = 1;
const TYPE_UNKNOWN = 2;
const TYPE_CONTROL = 3;
const TYPE_USER_DEFINED = 4;
const TYPE_BYTE = 6;

// ---------------------------------------------------------------------------
// Pre-tokenizers of byte-level BPE vocabularies, by tokenizer.ggml.pre

interface PreTokenizerSpec {
  /** Regexes in the Rust-regex syntax of tokenizer.json, each applied to the pieces the one before left (Split, Isolated). */
  splits: readonly string[];
  /** Leave the last split to ByteLevel's built-in GPT-2 regex (use_regex: true), as GPT-2's tokenizer.json does. */
  byteLevelRegex?: boolean;
  /** NFC-normalize first (Qwen's tokenizer.json does; llama.cpp does not). */
  nfc?: boolean;
  /** A pre-token that is a whole vocabulary entry is taken as is, merges or not (Llama 3's ignore_merges). */
  ignoreMerges?: boolean;
  /** llama.cpp's clean_spaces, Transformers' clean_up_tokenization_spaces (" ." → "." when decoding). */
  cleanSpaces: boolean;
  /** llama.cpp's add_bos when tokenizer.ggml.add_bos_token is absent. */
  addBos?: boolean;
}

/** GPT-2's regex (ByteLevel's built-in one). llama.cpp drops the final `|\s+`, which changes no split: unmatched text is a piece anyway. */
const GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/** Qwen2's tokenizer.json (llama.cpp runs it with `(?:'[sS]|'[tT]|...)` for the case-insensitive group). */
const QWEN2_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN35_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/** Llama 3's tokenizer.json: Qwen2's with digits in runs of up to three. */
const LLAMA3_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const DEEPSEEK_CJK = "[一-龥ࠀ-一가-퟿]+";

const QWEN2: PreTokenizerSpec = { splits: [QWEN2_REGEX], nfc: true, cleanSpaces: false };
const LLAMA3: PreTokenizerSpec = { splits: [LLAMA3_REGEX], ignoreMerges: true, cleanSpaces: true, addBos: true };
const GPT2: PreTokenizerSpec = { splits: [GPT2_REGEX], byteLevelRegex: true, cleanSpaces: true };
// SmolLM's tokenizer.json has Digits(individual_digits) there: the same split in Rust, but the JS
// library's Digits only knows ASCII digits, so it is written as the \p{N} split llama.cpp runs.
const STARCODER: PreTokenizerSpec = { splits: ["\\p{N}", GPT2_REGEX], byteLevelRegex: true, cleanSpaces: true };

/** tokenizer.ggml.pre → pre-tokenizer, after llama-vocab.cpp (names that llama.cpp treats alike share an entry). */
const PRE_TOKENIZERS: ReadonlyMap<string, PreTokenizerSpec> = new Map([
  // llama.cpp's own default, also for GGUF files written before tokenizer.ggml.pre existed.
  ["default", { splits: ["[\\p{P}\\$\\+<=>\\^~\\|]+", GPT2_REGEX, "\\p{N}+", "[0-9][0-9][0-9]"], cleanSpaces: true }],
  ["gpt-2", GPT2],
  ["phi-2", GPT2],
  ["llama3", LLAMA3],
  ["llama-v3", LLAMA3],
  ["llama-bpe", LLAMA3],
  ["dbrx", { splits: [LLAMA3_REGEX], cleanSpaces: true }],
  ["smaug-bpe", { splits: [LLAMA3_REGEX], cleanSpaces: true }],
  ["qwen2", QWEN2],
  ["deepseek-r1-qwen", QWEN2],
  ["qwen35", { splits: [QWEN35_REGEX], nfc: true, cleanSpaces: false }],
  ["smollm", { ...STARCODER, cleanSpaces: false }],
  ["starcoder", STARCODER],
  ["refact", STARCODER],
  ["codeshell", STARCODER],
  [
    "deepseek-llm",
    {
      splits: [
        "[\\r\\n]",
        "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
        "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
        "\\s+$",
        DEEPSEEK_CJK,
        "\\p{N}+",
      ],
      cleanSpaces: false,
    },
  ],
  ["deepseek-coder", { splits: ["[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", DEEPSEEK_CJK, "\\p{N}"], cleanSpaces: false }],
  [
    "deepseek-v3",
    {
      splits: [
        "\\p{N}{1,3}",
        "\\p{N}{1,3}",
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      ],
      cleanSpaces: false,
    },
  ],
]);

/** The tokenizer.ggml.pre values this module knows. */
export function ggufPreTokenizers(): string[] {
  return [...PRE_TOKENIZERS.keys()];
}

/**
 * Tokens llama.cpp ends a generation on by their spelling alone (llama-vocab.cpp's EOG list, less the
 * fill-in-the-middle tokens it also counts and a few model-specific ones).
 */
const END_OF_TURN_SPELLINGS = new Set([
  "<|eot_id|>",
  "<|im_end|>",
  "<|end|>",
  "<end_of_turn>",
  "<|endoftext|>",
  "<|eom_id|>",
  "<EOT>",
  "<|end_of_text|>",
]);

// ---------------------------------------------------------------------------
// Reading typed metadata, naming the key in every error

function describe(v: GgufValue): string {
  return v.type === "array" ? `an array of ${v.itemType}` : `a ${v.type}`;
}

const INTEGER_TYPES = new Set(["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"]);

class MetadataReader {
  constructor(
    private readonly m: GgufMetadata,
    readonly where: string,
  ) {}

  fail(key: string, problem: string): never {
    throw new TokenizerError(`${this.where}: metadata "${key}" ${problem}`);
  }

  private get(key: string, required: boolean): GgufValue | undefined {
    const v = this.m.get(key);
    if (v === undefined && required) this.fail(key, "is missing; a GGUF vocabulary needs it");
    return v;
  }

  string(key: string, required = false): string | undefined {
    const v = this.get(key, required);
    if (v === undefined) return undefined;
    if (v.type !== "string") this.fail(key, `is ${describe(v)}; expected a string`);
    return v.value;
  }

  bool(key: string): boolean | undefined {
    const v = this.get(key, false);
    if (v === undefined) return undefined;
    if (v.type !== "bool") this.fail(key, `is ${describe(v)}; expected a bool`);
    return v.value;
  }

  stringArray(key: string, required = false): string[] | undefined {
    const v = this.get(key, required);
    if (v === undefined) return undefined;
    if (v.type !== "array" || v.itemType !== "string") this.fail(key, `is ${describe(v)}; expected an array of strings`);
    return v.value;
  }

  /** An array of numbers, one per token (token types must be integers). */
  perToken(key: string, n: number, integers: boolean): number[] | undefined {
    const v = this.get(key, false);
    if (v === undefined) return undefined;
    const ok = v.type === "array" && (integers ? INTEGER_TYPES.has(v.itemType) : v.itemType === "float32" || v.itemType === "float64");
    if (!ok) this.fail(key, `is ${describe(v)}; expected an array of ${integers ? "integers" : "floats"}`);
    const values = (v.value as (number | bigint)[]).map(Number);
    if (values.length !== n) this.fail(key, `has ${values.length} entries but tokenizer.ggml.tokens has ${n}`);
    return values;
  }

  /** A token id: an integer below `n`. */
  tokenId(key: string, n: number): number | undefined {
    const v = this.get(key, false);
    if (v === undefined) return undefined;
    if (!INTEGER_TYPES.has(v.type)) this.fail(key, `is ${describe(v)}; expected a token id`);
    const id = Number(v.value);
    if (!(id >= 0 && id < n)) this.fail(key, `is ${id}, outside the vocabulary of ${n} tokens`);
    return id;
  }

  /** Keys that start with `prefix`, in file order. */
  keysStartingWith(prefix: string): string[] {
    return [...this.m.keys()].filter((k) => k.startsWith(prefix));
  }
}

// ---------------------------------------------------------------------------
// The tokenizer.json

/** Build a tokenizer.json and tokenizer_config.json from GGUF metadata; `where` (the file) starts every error message. */
export function tokenizerJsonFromGguf(metadata: GgufMetadata, where: string): GgufTokenizerJson {
  const r: MetadataReader = new MetadataReader(metadata, where);
  const model = r.string("tokenizer.ggml.model", true)!;
  if (model !== "gpt2" && model !== "llama") {
    r.fail(
      "tokenizer.ggml.model",
      `is "${model}"; supported: "gpt2" (byte-level BPE: Qwen, Llama 3, GPT-2) and "llama" (SentencePiece BPE: Llama 2, Mistral)`,
    );
  }
  const tokens = r.stringArray("tokenizer.ggml.tokens", true)!;
  if (tokens.length === 0) r.fail("tokenizer.ggml.tokens", "is empty");
  const n = tokens.length;
  const types = r.perToken("tokenizer.ggml.token_type", n, true) ?? tokens.map(() => TYPE_NORMAL);

  // Special ids; a SentencePiece vocabulary without them has llama.cpp's defaults <unk> 0, <s> 1, </s> 2.
  const spm = model === "llama";
  const defaultId = (id: number) => (spm && id < n ? id : undefined);
  const bos = r.tokenId("tokenizer.ggml.bos_token_id", n) ?? defaultId(1);
  const eos = r.tokenId("tokenizer.ggml.eos_token_id", n) ?? defaultId(2);
  const unk = r.tokenId("tokenizer.ggml.unknown_token_id", n) ?? defaultId(0);
  const pad = r.tokenId("tokenizer.ggml.padding_token_id", n);
  const eot = r.tokenId("tokenizer.ggml.eot_token_id", n);
  const eom = r.tokenId("tokenizer.ggml.eom_token_id", n);

  const pre = spm ? undefined : preTokenizerOf(r);
  const addBosKey = r.bool("tokenizer.ggml.add_bos_token");
  const addEosKey = r.bool("tokenizer.ggml.add_eos_token");
  if (addBosKey === true && bos === undefined) r.fail("tokenizer.ggml.add_bos_token", "is true but tokenizer.ggml.bos_token_id is missing");
  if (addEosKey === true && eos === undefined) r.fail("tokenizer.ggml.add_eos_token", "is true but tokenizer.ggml.eos_token_id is missing");
  const addBos = bos !== undefined && (addBosKey ?? (spm || pre?.addBos === true));
  const addEos = eos !== undefined && addEosKey === true;
  const template =
    addBos || addEos ? templateProcessing(addBos ? [tokens[bos!]!, bos!] : null, addEos ? [tokens[eos!]!, eos!] : null) : null;

  const added = addedTokens(tokens, types);
  let tokenizer: JsonObject;
  if (spm) {
    const scores = r.perToken("tokenizer.ggml.scores", n, false);
    if (!scores) r.fail("tokenizer.ggml.scores", 'is missing; a SentencePiece ("llama") vocabulary ranks its merges by these scores');
    // llama.cpp puts a space before the text unless tokenizer.ggml.add_space_prefix says otherwise.
    const prefix = r.bool("tokenizer.ggml.add_space_prefix") ?? true;
    tokenizer = sentencePieceJson(tokens, types, scores, added, unk === undefined ? null : tokens[unk]!, prefix, template);
  } else {
    const merges = r.stringArray("tokenizer.ggml.merges", true)!;
    tokenizer = byteLevelJson(r, tokens, types, merges, added, pre!, template);
  }

  const text = (id: number | undefined) => (id === undefined ? null : tokens[id]!);
  const config: JsonObject = {
    add_bos_token: addBos,
    add_eos_token: addEos,
    bos_token: text(bos),
    eos_token: text(eos),
    pad_token: text(pad),
    unk_token: text(unk),
    clean_up_tokenization_spaces: spm ? false : pre!.cleanSpaces,
  };
  const chatTemplate = chatTemplateOf(r);
  if (chatTemplate !== undefined) config.chat_template = chatTemplate;
  return { tokenizer, config, eosTokenIds: endOfGenerationIds(tokens, [eos, eot, eom]) };
}

function preTokenizerOf(r: MetadataReader): PreTokenizerSpec {
  // As llama.cpp: a GGUF file from before tokenizer.ggml.pre existed gets the default pre-tokenizer.
  const pre = r.string("tokenizer.ggml.pre") ?? "default";
  const spec = PRE_TOKENIZERS.get(pre);
  if (!spec)
    r.fail("tokenizer.ggml.pre", `is "${pre}", a pre-tokenizer this tokenizer does not know; supported: ${ggufPreTokenizers().join(", ")}`);
  return spec;
}

/** Control, unknown-type and user-defined tokens: matched in the text before the model sees it, as llama.cpp does. */
function addedTokens(tokens: readonly string[], types: readonly number[]): JsonObject[] {
  const out: JsonObject[] = [];
  types.forEach((type, id) => {
    if (type !== TYPE_CONTROL && type !== TYPE_UNKNOWN && type !== TYPE_USER_DEFINED) return;
    const content = tokens[id]!;
    if (content === "") return; // llama.cpp cannot match an empty token either
    out.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: type !== TYPE_USER_DEFINED });
  });
  return out;
}

/** The post-processor that puts BOS in front (and EOS after) each sequence, as Llama's tokenizer.json files do. */
function templateProcessing(bos: [string, number] | null, eos: [string, number] | null): JsonObject {
  const special = (t: [string, number] | null, typeId: number) => (t ? [{ SpecialToken: { id: t[0], type_id: typeId } }] : []);
  const sequence = (id: "A" | "B", typeId: number) => ({ Sequence: { id, type_id: typeId } });
  const specialTokens = [bos, eos].filter((t) => t !== null).map(([text, id]) => [text, { id: text, ids: [id], tokens: [text] }] as const);
  return {
    type: "TemplateProcessing",
    single: [...special(bos, 0), sequence("A", 0), ...special(eos, 0)],
    pair: [...special(bos, 0), sequence("A", 0), ...special(eos, 0), ...special(bos, 1), sequence("B", 1), ...special(eos, 1)],
    special_tokens: Object.fromEntries(specialTokens),
  };
}

/** tokenizer.json's vocab object; Object.fromEntries keeps a token spelled "__proto__" an ordinary key. */
function vocabObject(tokens: readonly string[], keep: (id: number) => boolean): Record<string, number> {
  const entries: [string, number][] = [];
  // Where two ids share a spelling, the later one is the text's id, as in llama.cpp's token_to_id.
  tokens.forEach((t, id) => keep(id) && entries.push([t, id]));
  return Object.fromEntries(entries);
}

function byteLevelJson(
  r: MetadataReader,
  tokens: readonly string[],
  types: readonly number[],
  mergeLines: readonly string[],
  added: JsonObject[],
  pre: PreTokenizerSpec,
  template: JsonObject | null,
): JsonObject {
  // Added tokens live outside the BPE vocabulary, as in Qwen's and Llama 3's tokenizer.json.
  const addedIds = new Set(added.map((a) => a.id as number));
  const vocab = vocabObject(tokens, (id) => !addedIds.has(id));
  const inVocab = new Set(Object.keys(vocab));
  const merges: [string, string][] = new Array(mergeLines.length);
  mergeLines.forEach((line, i) => {
    // llama.cpp splits at the first space after the first character.
    const sp = line.indexOf(" ", 1);
    const key = "tokenizer.ggml.merges";
    if (sp < 0) r.fail(key, `entry ${i} (${JSON.stringify(line)}) is not two tokens separated by a space`);
    const a = line.slice(0, sp);
    const b = line.slice(sp + 1);
    for (const part of [a, b, a + b]) {
      if (!inVocab.has(part)) {
        r.fail(
          key,
          `entry ${i} (${JSON.stringify(line)}) needs the token ${JSON.stringify(part)}, which tokenizer.ggml.tokens does not have`,
        );
      }
    }
    merges[i] = [a, b];
  });
  const byteLevel = (useRegex: boolean) => ({ type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: useRegex });
  const splits = pre.byteLevelRegex ? pre.splits.slice(0, -1) : pre.splits;
  const preTokenizers = [
    ...splits.map((regex) => ({ type: "Split", pattern: { Regex: regex }, behavior: "Isolated", invert: false })),
    byteLevel(pre.byteLevelRegex === true),
  ];
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: pre.nfc ? { type: "NFC" } : null,
    pre_tokenizer: preTokenizers.length === 1 ? preTokenizers[0] : { type: "Sequence", pretokenizers: preTokenizers },
    post_processor: template ? { type: "Sequence", processors: [byteLevel(false), template] } : byteLevel(false),
    decoder: byteLevel(false),
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: pre.ignoreMerges === true,
      vocab,
      merges,
    },
  };
}

/**
 * BPE merges of a SentencePiece vocabulary, as Transformers' SentencePieceExtractor derives them:
 * every split of a piece into two pieces of the vocabulary is a merge, ranked by the merged piece's
 * score (highest first; equal scores in vocabulary order, a piece's splits by their pieces' ids).
 * Merging by these ranks is llama.cpp's SentencePiece algorithm, which merges the adjacent pair whose
 * concatenation has the best score.
 */
export function mergesFromScores(tokens: readonly string[], scores: readonly number[]): [string, string][] {
  const ids = new Map<string, number>();
  tokens.forEach((t, id) => ids.set(t, id));
  const found: { left: string; right: string; score: number }[] = [];
  tokens.forEach((piece, id) => {
    if (ids.get(piece) !== id) return; // a repeated spelling counts once, as in the converter's dict
    const chars = Array.from(piece);
    if (chars.length < 2) return;
    const local: { left: string; right: string; l: number; r: number }[] = [];
    let left = "";
    for (let j = 0; j < chars.length - 1; j++) {
      left += chars[j];
      const right = piece.slice(left.length);
      const l = ids.get(left);
      const r = ids.get(right);
      if (l !== undefined && r !== undefined) local.push({ left, right, l, r });
    }
    local.sort((x, y) => x.l - y.l || x.r - y.r);
    for (const m of local) found.push({ left: m.left, right: m.right, score: scores[id]! });
  });
  found.sort((x, y) => y.score - x.score); // stable: ties keep vocabulary order
  return found.map((m) => [m.left, m.right]);
}

function sentencePieceJson(
  tokens: readonly string[],
  types: readonly number[],
  scores: readonly number[],
  added: JsonObject[],
  unkToken: string | null,
  addSpacePrefix: boolean,
  template: JsonObject | null,
): JsonObject {
  // Llama 2's tokenizer.json keeps every piece in the vocabulary, the added ones (<unk>, <s>, </s>) too.
  const vocab = vocabObject(tokens, () => true);
  const byteFallback = types.some((t) => t === TYPE_BYTE);
  const normalizers: JsonObject[] = [{ type: "Replace", pattern: { String: " " }, content: "▁" }];
  if (addSpacePrefix) normalizers.unshift({ type: "Prepend", prepend: "▁" });
  const decoders: JsonObject[] = [{ type: "Replace", pattern: { String: "▁" }, content: " " }, { type: "ByteFallback" }, { type: "Fuse" }];
  if (addSpacePrefix) decoders.push({ type: "Strip", content: " ", start: 1, stop: 0 });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: { type: "Sequence", normalizers },
    pre_tokenizer: null,
    post_processor: template,
    decoder: { type: "Sequence", decoders },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: unkToken,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: byteFallback,
      ignore_merges: false,
      vocab,
      merges: mergesFromScores(tokens, scores),
    },
  };
}

/** tokenizer.chat_template, and named ones (tokenizer.chat_template.NAME) as tokenizer_config.json's list form. */
function chatTemplateOf(r: MetadataReader): string | { name: string; template: string }[] | undefined {
  const main = r.string("tokenizer.chat_template");
  const prefix = "tokenizer.chat_template.";
  const named = r.keysStartingWith(prefix).map((key) => ({ name: key.slice(prefix.length), template: r.string(key)! }));
  if (named.length === 0) return main;
  return [...(main === undefined ? [] : [{ name: "default", template: main }]), ...named];
}

function endOfGenerationIds(tokens: readonly string[], explicit: readonly (number | undefined)[]): number[] {
  const ids = new Set(explicit.filter((id) => id !== undefined));
  // As llama.cpp: where both <|return|> and <|call|> exist (gpt-oss), <|end|> ends a message, not the generation.
  const harmony = tokens.includes("<|return|>") && tokens.includes("<|call|>");
  tokens.forEach((t, id) => {
    if (END_OF_TURN_SPELLINGS.has(t) && !(harmony && t === "<|end|>")) ids.add(id);
  });
  return [...ids];
}
