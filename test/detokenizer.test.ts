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
