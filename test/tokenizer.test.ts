import { Tokenizer as RustTokenizer } from "@anush008/tokenizers";
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Tokenizer } from "../src/tokenizer/tokenizer.js";
import { qwen3TokenizerDir } from "./helpers/tiny-model.js";
import { CORPUS, fuzzStrings, LONG } from "./helpers/tricky-corpus.js";

const QWEN3 = qwen3TokenizerDir();
const tokenizer = Tokenizer.fromDir(QWEN3);
// The oracle: the Rust tokenizers library (what Transformers and vLLM run) on the same tokenizer.json.
const rust = RustTokenizer.fromFile(join(QWEN3, "tokenizer.json"));

const root = mkdtempSync(join(tmpdir(), "tokamak-tokenizer-"));
after(() => rmSync(root, { recursive: true, force: true }));

let folders = 0;
/** A model folder with the Qwen3 tokenizer files, edited by the test. */
function folder(files: Record<string, string | null> = {}): string {
  const dir = join(root, `t${folders++}`);
  mkdirSync(dir);
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(QWEN3, f), join(dir, f));
  for (const [name, text] of Object.entries(files)) {
    if (text === null) rmSync(join(dir, name));
    else writeFileSync(join(dir, name), text);
  }
  return dir;
}

function editedConfig(edit: (c: Record<string, unknown>) => void): string {
  const c = JSON.parse(readFileSync(join(QWEN3, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
  edit(c);
  return JSON.stringify(c);
}

async function rustIds(text: string, addSpecialTokens: boolean): Promise<number[]> {
  return (await rust.encode(text, null, { addSpecialTokens })).getIds();
}

describe("Tokenizer: ids identical to the Rust tokenizers library", () => {
  it("on a corpus of tricky strings, with and without special tokens", async () => {
    for (const text of [...CORPUS, LONG]) {
      for (const addSpecialTokens of [true, false]) {
        const label = `${JSON.stringify(text.slice(0, 60))} (addSpecialTokens: ${addSpecialTokens})`;
        assert.deepEqual(tokenizer.encode(text, { addSpecialTokens }), await rustIds(text, addSpecialTokens), label);
      }
    }
  });

  it("on 2000 random strings of awkward pieces", async () => {
    for (const text of fuzzStrings(2000, 42)) assert.deepEqual(tokenizer.encode(text), await rustIds(text, true), JSON.stringify(text));
  });

  it("special tokens written in the text become their ids", () => {
    assert.deepEqual(tokenizer.encode("<|im_start|>user<|im_end|>"), [151644, 872, 151645]);
  });

  it("decodes as the Rust library does, with and without special tokens", async () => {
    for (const text of [...CORPUS, ...fuzzStrings(300, 7)]) {
      const ids = tokenizer.encode(text);
      for (const skip of [false, true]) {
        assert.equal(tokenizer.decode(ids, { skipSpecialTokens: skip }), await rust.decode(ids, skip), JSON.stringify(text));
      }
    }
  });
});

describe("Tokenizer: decode, vocabulary, special tokens", () => {
  it("round-trips text through encode and decode (up to NFC, which Qwen's normalizer applies)", () => {
    for (const text of [...CORPUS, LONG]) assert.equal(tokenizer.decode(tokenizer.encode(text)), text.normalize("NFC"));
  });

  it("decodes an empty list to the empty string, and ids past the vocabulary to nothing", () => {
    assert.equal(tokenizer.decode([]), "");
    assert.equal(tokenizer.decode([9707, 151900]), "Hello");
  });

  it("drops only special tokens with skipSpecialTokens", () => {
    const ids = tokenizer.encode("<|im_start|>assistant\n<think>\nok\n</think>\n\nHi<|im_end|>");
    assert.equal(tokenizer.decode(ids, { skipSpecialTokens: true }), "assistant\n<think>\nok\n</think>\n\nHi");
  });

  it("knows the vocabulary size, token strings and which tokens are special", () => {
    assert.equal(tokenizer.vocabSize, 151669);
    assert.equal(tokenizer.vocabSize, rust.getVocabSize(true));
    assert.equal(tokenizer.idToToken(151644), "<|im_start|>");
    assert.equal(tokenizer.idToToken(9707), "Hello");
    assert.equal(tokenizer.idToToken(10_000_000), undefined);
    assert.equal(tokenizer.tokenToId("<|im_end|>"), 151645);
    assert.equal(tokenizer.tokenToId("no such token"), undefined);
    assert.ok(tokenizer.isSpecial(151643) && tokenizer.isSpecial(151645));
    assert.ok(!tokenizer.isSpecial(151657), "<tool_call> is an added token but not special");
    assert.ok(!tokenizer.isSpecial(9707));
  });

  it("takes end-of-sequence ids from tokenizer_config, generation_config and config.json", () => {
    assert.deepEqual(tokenizer.eosTokenIds, [151645]);
    assert.equal(tokenizer.bosTokenId, undefined, "Qwen3's bos_token is null");
    const dir = folder({
      "generation_config.json": JSON.stringify({ eos_token_id: [151645, 151643] }),
      "config.json": JSON.stringify({ eos_token_id: 151662 }),
      "tokenizer_config.json": editedConfig((c) => (c.bos_token = { content: "<|endoftext|>", special: true })),
    });
    const t = Tokenizer.fromDir(dir);
    assert.deepEqual(t.eosTokenIds, [151645, 151643, 151662]);
    assert.equal(t.bosTokenId, 151643);
  });
});

describe("Tokenizer: chat template", () => {
  const conversation = [
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: "What is 2+2?" },
    { role: "assistant", content: "<think>\nEasy.\n</think>\n\n4" },
    { role: "user", content: "And 3+3?" },
  ];

  it("renders Qwen3's format with a generation prompt (earlier reasoning dropped)", () => {
    const want =
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" +
      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n" +
      "<|im_start|>assistant\n4<|im_end|>\n" +
      "<|im_start|>user\nAnd 3+3?<|im_end|>\n" +
      "<|im_start|>assistant\n";
    assert.equal(tokenizer.applyChatTemplate(conversation, { addGenerationPrompt: true }), want);
    assert.equal(tokenizer.applyChatTemplate(conversation), want.slice(0, -"<|im_start|>assistant\n".length));
  });

  it("passes extra variables: Qwen3's enable_thinking", () => {
    const text = tokenizer.applyChatTemplate([{ role: "user", content: "Hi" }], {
      addGenerationPrompt: true,
      extra: { enable_thinking: false },
    });
    assert.equal(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  });

  it("renders tools as JSON the way Python's json.dumps writes it", () => {
    const tools = [
      { type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } } },
    ];
    const text = tokenizer.applyChatTemplate([{ role: "user", content: "Weather in Paris?" }], { tools, addGenerationPrompt: true });
    assert.ok(text.startsWith("<|im_start|>system\n# Tools\n\nYou may call one or more functions"), text);
    assert.ok(
      text.includes(
        '{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}',
      ),
      text,
    );
    assert.ok(text.endsWith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"));
  });

  it("accepts the list-of-named-templates form, picking tool_use when tools are given", () => {
    const list = [
      { name: "default", template: "D{{ messages[0].content }}{{ eos_token }}" },
      { name: "tool_use", template: "T{{ tools | length }}{{ bos_token }}" },
    ];
    const dir = folder({
      "tokenizer_config.json": editedConfig((c) => {
        c.chat_template = list;
        c.bos_token = "<|endoftext|>";
      }),
    });
    const t = Tokenizer.fromDir(dir);
    assert.equal(t.applyChatTemplate([{ role: "user", content: "x" }]), "Dx<|im_end|>");
    assert.equal(t.applyChatTemplate([{ role: "user", content: "x" }], { tools: [1, 2] }), "T2<|endoftext|>");
  });

  it("says clearly when the model has no chat template, or the template fails", () => {
    const none = Tokenizer.fromDir(folder({ "tokenizer_config.json": editedConfig((c) => delete c.chat_template) }));
    assert.equal(none.hasChatTemplate, false);
    assert.throws(() => none.applyChatTemplate([{ role: "user", content: "x" }]), /tokenizer_config\.json: the model has no chat template/);

    const raising = Tokenizer.fromDir(
      folder({ "tokenizer_config.json": editedConfig((c) => (c.chat_template = "{{ raise_exception('roles must alternate') }}")) }),
    );
    assert.throws(() => raising.applyChatTemplate([]), /chat template "default" failed to render: roles must alternate/);

    const broken = Tokenizer.fromDir(folder({ "tokenizer_config.json": editedConfig((c) => (c.chat_template = "{% if %}")) }));
    assert.throws(() => broken.applyChatTemplate([]), /tokenizer_config\.json: chat template "default" does not parse/);
  });
});

describe("Tokenizer: clear errors for bad folders", () => {
  it("names a missing tokenizer.json", () => {
    const dir = folder({ "tokenizer.json": null });
    assert.throws(
      () => Tokenizer.fromDir(dir),
      (err: Error) => {
        assert.equal(err.name, "TokenizerError");
        assert.match(err.message, new RegExp(`^${join(dir, "tokenizer.json").replace(/[.\\]/g, "\\$&")}: not found`));
        return true;
      },
    );
  });

  it("names a file that is not valid JSON, or not a tokenizer", () => {
    assert.throws(() => Tokenizer.fromDir(folder({ "tokenizer.json": "{ nope" })), /tokenizer\.json: not valid JSON/);
    assert.throws(() => Tokenizer.fromDir(folder({ "tokenizer.json": "[1, 2]" })), /tokenizer\.json: expected a JSON object/);
    assert.throws(
      () => Tokenizer.fromDir(folder({ "tokenizer.json": '{"version": "1.0"}' })),
      /tokenizer\.json: missing the "model" object/,
    );
    assert.throws(() => Tokenizer.fromDir(folder({ "tokenizer_config.json": "{" })), /tokenizer_config\.json: not valid JSON/);
    assert.throws(() => Tokenizer.fromDir(folder({ "generation_config.json": "nope" })), /generation_config\.json: not valid JSON/);
    const badTemplate = editedConfig((c) => (c.chat_template = 42));
    assert.throws(() => Tokenizer.fromDir(folder({ "tokenizer_config.json": badTemplate })), /"chat_template" must be a string or a list/);
  });

  it("works without tokenizer_config.json, as Transformers does (no chat template then)", () => {
    const t = Tokenizer.fromDir(folder({ "tokenizer_config.json": null }));
    assert.deepEqual(t.encode("Hello"), [9707]);
    assert.equal(t.hasChatTemplate, false);
  });
});
