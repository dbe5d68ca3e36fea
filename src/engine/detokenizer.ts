import type { ByteLevelPieces } from "../tokenizer/tokenizer.js";

/** The part of a tokenizer the detokenizer needs. */
export interface TokenDecoder {
  decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): string;
  /**
   * Each token's bytes, where text is those bytes concatenated and read as UTF-8 (byte-level BPE: Qwen,
   * Llama 3, GPT-2), with the ids `skipSpecialTokens` drops; null where decoding depends on context.
   */
  byteLevelPieces?(): ByteLevelPieces | null;
}

export interface DetokenizerOptions {
  skipSpecialTokens: boolean;
  stop: readonly string[];
  includeStopStrInOutput: boolean;
}

/**
 * Turns a growing list of token ids into text, incrementally and safely:
 *
 * - UTF-8 safe: a character split across byte-level tokens shows up as U+FFFD
 *   while incomplete, and is held back until its last byte arrives.
 * - Context-aware: each new piece is decoded together with a few previous
 *   tokens and the difference taken, so tokenizers that add or strip leading
 *   spaces depending on context produce the same text as a full decode.
 * - Stop strings: the text stops at the first stop string (kept or not, per
 *   include_stop_str_in_output), and text that could still become a stop
 *   string is never emitted before that is known.
 */
export class IncrementalDetokenizer {
  /** The byte-level fast path: one streaming UTF-8 decoder, no re-decoding (null: the general path below). */
  private readonly pieces: ByteLevelPieces | null;
  private readonly utf8: TextDecoder | null;
  private tokens: number[];
  private prefixOffset: number;
  private readOffset: number;
  private text = "";
  private emitted = 0;
  /** The stop string that ended the text, if any. */
  stoppedBy: string | null = null;

  constructor(
    private decoder: TokenDecoder,
    promptTokenIds: readonly number[],
    private opts: DetokenizerOptions,
  ) {
    this.pieces = decoder.byteLevelPieces?.() ?? null;
    this.utf8 = this.pieces ? new TextDecoder("utf-8") : null;
    // A few prompt tokens of left context, as vLLM does.
    this.tokens = this.pieces ? [] : promptTokenIds.slice(-5);
    this.prefixOffset = 0;
    this.readOffset = this.tokens.length;
  }

  /** The full output text so far (cut at a stop string once one is seen). */
  get output(): string {
    return this.text;
  }

  /** Add one generated token. Returns the stop string if the text now contains one. */
  push(token: number): string | null {
    if (this.stoppedBy !== null) return this.stoppedBy;
    if (this.pieces) {
      // Incomplete characters wait inside the streaming decoder for their last bytes.
      if (this.opts.skipSpecialTokens && this.pieces.special.has(token)) return null;
      const bytes = this.pieces.bytes[token];
      if (!bytes) return null; // outside the vocabulary: decodes to nothing
      const piece = this.utf8!.decode(bytes, { stream: true });
      if (piece.length === 0) return null;
      const before = this.text.length;
      this.text += piece;
      return this.checkStop(before);
    }
    this.tokens.push(token);
    const skip = { skipSpecialTokens: this.opts.skipSpecialTokens };
    const prefix = this.decoder.decode(this.tokens.slice(this.prefixOffset, this.readOffset), skip);
    const full = this.decoder.decode(this.tokens.slice(this.prefixOffset), skip);
    if (full.length <= prefix.length || full.endsWith("\uFFFD")) return null; // incomplete character: wait
    const before = this.text.length;
    this.text += full.slice(prefix.length);
    this.prefixOffset = this.readOffset;
    this.readOffset = this.tokens.length;
    return this.checkStop(before);
  }

  private checkStop(before: number): string | null {
    const stops = this.opts.stop;
    if (stops.length === 0) return null;
    let best = -1;
    let which = "";
    for (const s of stops) {
      // Only matches that end in the new text can be new.
      const from = Math.max(0, before - s.length + 1);
      const i = this.text.indexOf(s, from);
      if (i >= 0 && (best < 0 || i < best)) {
        best = i;
        which = s;
      }
    }
    if (best < 0) return null;
    this.text = this.text.slice(0, this.opts.includeStopStrInOutput ? best + which.length : best);
    this.stoppedBy = which;
    return which;
  }

  /**
   * The text not yet handed out. Unless `final`, a tail that is the start of
   * some stop string is held back, since the next token may complete it.
   */
  takeDelta(final: boolean): string {
    let end = this.text.length;
    if (!final && this.stoppedBy === null) end -= this.pendingStopPrefix();
    if (end <= this.emitted) return "";
    const delta = this.text.slice(this.emitted, end);
    this.emitted = end;
    return delta;
  }

  /** Length of the longest suffix of the text that is a proper prefix of a stop string. */
  private pendingStopPrefix(): number {
    let longest = 0;
    for (const s of this.opts.stop) {
      for (let k = Math.min(s.length - 1, this.text.length); k > longest; k--) {
        if (this.text.endsWith(s.slice(0, k))) {
          longest = k;
          break;
        }
      }
    }
    return longest;
  }
}
