import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { IncrementalDetokenizer } from "../src/engine/detokenizer.js";
import { Tokenizer } from "../src/tokenizer/tokenizer.js";
import { qwen3TokenizerDir } from "./helpers/tiny-model.js";

const tok = Tokenizer.fromDir(qwen3TokenizerDir());
const prompt = tok.encode("Say something:");

/** Feed the ids of `text` one at a time; returns every streamed delta and the detokenizer. */
function stream(text: string, stop: string[] = [], include = false) {
  const ids = tok.encode(text);
  const d = new IncrementalDetokenizer(tok, prompt, { skipSpecialTokens: true, stop, includeStopStrInOutput: include });
  const deltas: string[] = [];
  for (const id of ids) {
    const hit = d.push(id);
    deltas.push(d.takeDelta(hit !== null));
    if (hit !== null) break;
  }
  deltas.push(d.takeDelta(true));
  return { deltas, d, ids };
}

describe("incremental detokenizer", () => {
  const texts = [
    "Hello, world! 👋🏽 Family: 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵.",
    "日本語のテキストと中文字符，混在한국어 text.",
    "Accents: café, naïve, Ångström, e\u0301 (combining).",
    "  leading spaces\tand\ttabs\n\nnew lines   trailing  ",
    "Numbers 1234567890 and code: `const x = a?.b ?? 0;`",
  ];

  for (const text of texts) {
    it(`streams ${JSON.stringify(text.slice(0, 24))}… exactly, never a broken character`, () => {
      const { deltas, ids } = stream(text);
      assert.equal(deltas.join(""), tok.decode(ids, { skipSpecialTokens: true }));
      assert.equal(deltas.join(""), text.normalize("NFC")); // the Qwen tokenizer normalizes to NFC
      for (const piece of deltas) assert.ok(!piece.includes("\uFFFD"), `delta ${JSON.stringify(piece)} has a replacement character`);
    });
  }

  it("some emoji really are split across tokens (so the test above means something)", () => {
    const ids = tok.encode("👨‍👩‍👧‍👦");
    assert.ok(ids.length > 1);
    assert.ok(ids.some((id) => tok.decode([id]).includes("\uFFFD")));
  });

  it("stops at a stop string split across tokens, and never streams any part of it", () => {
    const { deltas, d } = stream("The answer is 42. END OF STORY and more text", [" END OF"]);
    assert.equal(d.output, "The answer is 42.");
    assert.equal(d.stoppedBy, " END OF");
    assert.equal(deltas.join(""), "The answer is 42.");
    for (const piece of deltas) assert.ok(!piece.includes("END"));
  });

  it("include_stop_str_in_output keeps the stop string", () => {
    const { d } = stream("one two three four", ["three"], true);
    assert.equal(d.output, "one two three");
  });

  it("the earliest of several stop strings wins; a partial match that fails is released", () => {
    const { deltas, d } = stream("abc xyz ab! done", ["ab!", "done"]);
    assert.equal(d.output, "abc xyz ");
    assert.equal(deltas.join(""), "abc xyz ");
    const r = stream("held back: EN then released", ["END"]);
    assert.equal(r.deltas.join(""), "held back: EN then released");
  });
});

describe("byte-level fast path", () => {
  it("the Qwen3 tokenizer takes it", () => {
    assert.ok(tok.byteLevelPieces() !== null);
  });

  it("streams exactly what the general path and a full decode give, over random ids (special tokens and split characters included)", () => {
    const general = { decode: (ids: number[], o?: { skipSpecialTokens?: boolean }) => tok.decode(ids, o) };
    let s = 12345;
    const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    for (let trial = 0; trial < 40; trial++) {
      const skipSpecialTokens = trial % 2 === 0;
      const ids = Array.from({ length: 60 }, () => (next() < 0.05 ? 151643 + Math.floor(next() * 20) : Math.floor(next() * 151643)));
      const fast = new IncrementalDetokenizer(tok, prompt, { skipSpecialTokens, stop: [], includeStopStrInOutput: false });
      const slow = new IncrementalDetokenizer(general, prompt, { skipSpecialTokens, stop: [], includeStopStrInOutput: false });
      for (const id of ids) {
        fast.push(id);
        slow.push(id);
      }
      const full = tok.decode(ids, { skipSpecialTokens });
      assert.equal(fast.output, slow.output, `trial ${trial}`);
      assert.ok(full.startsWith(fast.output), `trial ${trial}: the streamed text is a prefix of the full decode`);
      assert.ok(full.length - fast.output.length <= 2, `trial ${trial}: only an incomplete last character is held back`);
    }
  });
});
