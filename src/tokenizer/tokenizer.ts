import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { mergeEosTokenIds } from "../defaults.js";
import { type GgufMetadata, readGguf } from "../formats/gguf.js";
import { checkRegularFile, readJsonFile } from "../formats/regular-file.js";
import { type ChatMessage, ChatTemplateError, type ChatTemplateOptions, ChatTemplates } from "./chat-template.js";
import { tokenizerJsonFromGguf } from "./gguf-tokenizer.js";
import { TokenizerError } from "./tokenizer-error.js";

export type { ChatMessage, ChatTemplateOptions } from "./chat-template.js";
export { TokenizerError };

type JsonObject = Record<string, unknown>;

/** Parse a JSON object file; undefined when it is absent and optional. */
function readJsonObject(path: string, required: boolean, hint: string): JsonObject | undefined {
  if (!existsSync(path)) {
    if (required) throw new TokenizerError(`${path}: not found; ${hint}`);
    return undefined;
  }
  const value = readJsonFile(path, TokenizerError);
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new TokenizerError(`${path}: expected a JSON object`);
  return value as JsonObject;
}

/** Special tokens in tokenizer_config.json are a string, or an AddedToken object `{content, ...}`. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (typeof v === "object" && v !== null && typeof (v as JsonObject).content === "string") return (v as JsonObject).content as string;
  return undefined;
}

/** `eos_token_id` in config.json / generation_config.json is a number or a list of numbers. */
function idList(v: unknown): number[] {
  if (Number.isInteger(v)) return [v as number];
  if (Array.isArray(v)) return v.filter((x): x is number => Number.isInteger(x));
  return [];
}

function largestId(hf: HfTokenizer): number {
  let max = -1;
  for (const id of hf.get_vocab(true).values()) max = Math.max(max, id);
  return max;
}

/** What a tokenizer is made of: a tokenizer.json and a tokenizer_config.json, from a model folder, a GGUF file or memory. */
interface TokenizerFiles {
  tokenizer: JsonObject;
  config: JsonObject;
  /** Stop ids configured for generation, from generation_config.json and config.json. */
  generationEosIds: number[];
  chatTemplates?: ChatTemplates;
  /** Where the tokenizer came from, for messages: the tokenizer.json path, the GGUF file. */
  where: string;
  /** Where the chat template would be, and its key there, for the message when there is none. */
  templateWhere: string;
  templateKey: string;
}

/** Each token's bytes under a byte-level decoder, and the ids skip_special_tokens drops. */
export interface ByteLevelPieces {
  bytes: readonly Uint8Array[];
  special: ReadonlySet<number>;
}

/** GPT-2's byte-level alphabet, inverted: the character each byte is spelled with, back to the byte. */
function unicodeToByte(): Map<string, number> {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const map = new Map<string, number>();
  for (const b of printable) map.set(String.fromCharCode(b), b);
  let extra = 0;
  for (let b = 0; b < 256; b++) if (!printable.includes(b)) map.set(String.fromCharCode(256 + extra++), b);
  return map;
}

function readTokenizerFiles(dir: string): TokenizerFiles {
  const tokenizerPath = join(dir, "tokenizer.json");
  const tokenizer = readJsonObject(tokenizerPath, true, "a Hugging Face model folder needs a tokenizer.json (the fast-tokenizer format)")!;
  if (typeof tokenizer.model !== "object" || tokenizer.model === null) {
    throw new TokenizerError(`${tokenizerPath}: missing the "model" object; expected a Hugging Face tokenizers file`);
  }
  // Transformers loads a fast tokenizer without tokenizer_config.json; so do we (no chat template then).
  const configPath = join(dir, "tokenizer_config.json");
  const config = readJsonObject(configPath, false, "") ?? {};
  const generation = readJsonObject(join(dir, "generation_config.json"), false, "");
  const model = readJsonObject(join(dir, "config.json"), false, "");
  return {
    tokenizer,
    config,
    generationEosIds: [...idList(generation?.eos_token_id), ...idList(model?.eos_token_id)],
    chatTemplates: readChatTemplates(dir, config),
    where: tokenizerPath,
    templateWhere: configPath,
    templateKey: "chat_template",
  };
}

// Newer Transformers save the template as chat_template.jinja; it wins over tokenizer_config.json, as there.
function readChatTemplates(dir: string, config: JsonObject): ChatTemplates | undefined {
  const jinjaPath = join(dir, "chat_template.jinja");
  if (existsSync(jinjaPath)) {
    checkRegularFile(jinjaPath, TokenizerError);
    return ChatTemplates.fromConfigValue(readFileSync(jinjaPath, "utf8"), jinjaPath);
  }
  return ChatTemplates.fromConfigValue(config.chat_template, join(dir, "tokenizer_config.json"));
}

/**
 * A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) with the
 * model's chat template and end-of-sequence ids. Token ids match the Rust
 * `tokenizers` library, which Transformers and vLLM use. Made from a model
 * folder, from a GGUF file's tokenizer.ggml.* metadata, or from the two JSON
 * objects in memory.
 */
export class Tokenizer {
  /** One past the largest token id, added tokens included. */
  readonly vocabSize: number;
  readonly bosTokenId?: number;
  /** Ids that end a generation: tokenizer_config's eos_token, then generation_config's and config.json's eos_token_id. */
  readonly eosTokenIds: number[];
  private readonly specialIds: Set<number>;
  private readonly specialTokens: Record<string, string> = {};

  private constructor(
    private readonly hf: HfTokenizer,
    private readonly files: TokenizerFiles,
  ) {
    this.vocabSize = largestId(hf) + 1;
    const added = [...hf.get_added_tokens_decoder().values()];
    this.specialIds = new Set(added.filter((t) => t.special).map((t) => t.id));
    for (const key of ["bos_token", "eos_token", "pad_token", "unk_token"]) {
      const content = tokenContent(files.config[key]);
      if (content !== undefined) this.specialTokens[key] = content;
    }
    this.bosTokenId = this.idOf(this.specialTokens.bos_token);
    const eos = this.idOf(this.specialTokens.eos_token);
    this.eosTokenIds = mergeEosTokenIds(eos === undefined ? [] : [eos], files.generationEosIds);
  }

  /** Load the tokenizer of a Hugging Face model folder. */
  /** A Hugging Face model folder's tokenizer, or a GGUF file's (its tokenizer.ggml.* metadata). */
  static fromDir(modelDir: string): Tokenizer {
    if (modelDir.toLowerCase().endsWith(".gguf")) return Tokenizer.fromGguf(modelDir);
    return Tokenizer.build(readTokenizerFiles(modelDir));
  }

  /**
   * A tokenizer from the contents of tokenizer.json and tokenizer_config.json (chat_template, special
   * tokens). `where` names them in errors; `generationEosIds` are more stop ids, as generation_config.json's.
   */
  static fromJson(tokenizer: object, config: object = {}, opts: { where?: string; generationEosIds?: number[] } = {}): Tokenizer {
    const where = opts.where ?? "tokenizer.json";
    const t = tokenizer as JsonObject;
    if (typeof t !== "object" || t === null || Array.isArray(t)) throw new TokenizerError(`${where}: expected a JSON object`);
    if (typeof t.model !== "object" || t.model === null) {
      throw new TokenizerError(`${where}: missing the "model" object; expected a Hugging Face tokenizers file`);
    }
    if (typeof config !== "object" || config === null || Array.isArray(config)) {
      throw new TokenizerError(`${where}: the tokenizer config must be a JSON object`);
    }
    const c = config as JsonObject;
    return Tokenizer.build({
      tokenizer: t,
      config: c,
      generationEosIds: opts.generationEosIds ?? [],
      chatTemplates: ChatTemplates.fromConfigValue(c.chat_template, where),
      where,
      templateWhere: where,
      templateKey: "chat_template",
    });
  }

  /**
   * The tokenizer of a GGUF file (a path, or its parsed metadata), from its tokenizer.ggml.* keys and
   * tokenizer.chat_template; see gguf-tokenizer.ts for what is supported. End-of-sequence ids are the
   * ones llama.cpp stops on: eos, eot and eom ids, and end-of-turn tokens (<|im_end|>, <|eot_id|>, ...).
   */
  static fromGguf(source: string | GgufMetadata, where = typeof source === "string" ? source : "GGUF metadata"): Tokenizer {
    const metadata = typeof source === "string" ? readGguf(source).metadata : source;
    const json = tokenizerJsonFromGguf(metadata, where);
    return Tokenizer.build({
      tokenizer: json.tokenizer,
      config: json.config,
      generationEosIds: json.eosTokenIds,
      chatTemplates: ChatTemplates.fromConfigValue(json.config.chat_template, where),
      where,
      templateWhere: where,
      templateKey: "tokenizer.chat_template",
    });
  }

  private static build(files: TokenizerFiles): Tokenizer {
    let hf: HfTokenizer;
    try {
      hf = new HfTokenizer(files.tokenizer, files.config);
    } catch (err) {
      throw new TokenizerError(`${files.where}: cannot build the tokenizer (${(err as Error).message})`);
    }
    return new Tokenizer(hf, files);
  }

  /** Text to ids. `addSpecialTokens` (default true) applies the tokenizer's post-processor, e.g. a leading BOS. */
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.hf.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  /** Ids to text. Ids outside the vocabulary decode to nothing, as in the Rust tokenizer. */
  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    // The JS library throws on an empty list; the empty text is the right answer.
    if (ids.length === 0) return "";
    return this.hf.decode(ids, { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  private longest: number | undefined;

  /**
   * The most characters one token can stand for: its longest vocabulary entry (byte-level entries spell one
   * character per byte, which is at least the decoded text's length), so no text longer than maxModelLen times
   * this fits in the context.
   */
  get maxTokenChars(): number {
    if (this.longest === undefined) {
      let max = 1;
      for (const token of this.hf.get_vocab(true).keys()) max = Math.max(max, token.length);
      this.longest = max;
    }
    return this.longest;
  }

  private pieces: ByteLevelPieces | null | undefined;

  /**
   * For a byte-level BPE tokenizer (its decoder is ByteLevel alone, no clean-up of spaces): every token's
   * bytes, so text streams without decoding token lists again. Vocabulary entries map back through the
   * byte-to-character table; added tokens take what the library decodes them to. Null otherwise.
   */
  byteLevelPieces(): ByteLevelPieces | null {
    if (this.pieces !== undefined) return this.pieces;
    this.pieces = null;
    const decoder = this.files.tokenizer.decoder as { type?: string; decoders?: { type?: string }[] } | null | undefined;
    const steps = decoder?.type === "Sequence" ? (decoder.decoders ?? []) : decoder ? [decoder] : [];
    if (steps.length !== 1 || steps[0]?.type !== "ByteLevel" || this.files.config.clean_up_tokenization_spaces === true) return null;
    const toByte = unicodeToByte();
    const added = new Map([...this.hf.get_added_tokens_decoder().entries()].map(([id, t]) => [id, t.content] as const));
    const utf8 = new TextEncoder();
    const bytes: Uint8Array[] = [];
    for (let id = 0; id < this.vocabSize; id++) {
      if (added.has(id)) {
        bytes.push(utf8.encode(this.hf.decode([id], { skip_special_tokens: false })));
        continue;
      }
      const token = this.hf.id_to_token(id);
      if (token === undefined) {
        bytes.push(new Uint8Array(0));
        continue;
      }
      const out = new Uint8Array(token.length);
      let n = 0;
      for (const ch of token) {
        const b = toByte.get(ch);
        if (b === undefined) return null; // not a byte-level vocabulary after all
        out[n++] = b;
      }
      bytes.push(out.subarray(0, n));
    }
    this.pieces = { bytes, special: this.specialIds };
    return this.pieces;
  }

  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  /** True for added tokens marked special (<|im_start|>, <|endoftext|>): the ones `skipSpecialTokens` drops. */
  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  get hasChatTemplate(): boolean {
    return this.files.chatTemplates !== undefined;
  }

  /** Render a conversation with the model's chat template into the prompt text (encode it with addSpecialTokens: false). */
  applyChatTemplate(messages: ChatMessage[], opts: ChatTemplateOptions = {}): string {
    const templates = this.files.chatTemplates;
    if (!templates) {
      throw new ChatTemplateError(
        this.files.templateWhere,
        `the model has no chat template ("${this.files.templateKey}" is missing); send plain prompts instead`,
      );
    }
    return templates.render(messages, opts, this.specialTokens);
  }

  private idOf(token: string | undefined): number | undefined {
    return token === undefined ? undefined : this.hf.token_to_id(token);
  }
}
