/**
 * Strings that trip tokenizers up (unicode spaces, combining marks, emoji sequences, special-token
 * look-alikes, long runs), and reproducible random strings built from awkward pieces: shared by the
 * tokenizer tests that compare implementations id for id.
 */

export const CORPUS = [
  "",
  "Hello, world!",
  "   leading and trailing spaces   ",
  "runs    of     spaces\tand\t\ttabs\n\n\nand newlines\r\n\r\nwindows too",
  " \n \n\t \u00a0\u2003\u3000 unicode spaces",
  "日本語のテキストと中文文本，还有한국어 텍스트",
  "emoji 😀👍🏽🇫🇷 and ZWJ sequences 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏿‍💻",
  "café naïve résumé Ångström ß ǅ ﬁ",
  "combining marks: e\u0301 a\u0308 n\u0303 (decomposed)",
  "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
  "text<|endoftext|>more text <|im_end|><think>\nhmm\n</think><tool_call>",
  "<|im_start <|im_start|| |im_start|> broken specials",
  "1234567890123456789012345678901234567890 3.14159 1e-10 -42 1,000,000",
  "function f(x) {\n  return x ** 2; // square\n}\n\nconst s = `${f(3)}`;\n",
  "def main():\n    for i in range(10):\n        print(f'{i:>4}')\n",
  "mixed: Привет мир مرحبا بالعالم שלום עולם नमस्ते दुनिया สวัสดีชาวโลก Γειά σου",
  "I'm sure they'll say we'd've DON'T It'S",
  "control \u0000 \u001f \u007f \u0085 \u2028 \u200b \u200d \ufeff chars",
  "math ∑∫√∞≠≤ ²½Ⅻ 𝒳𝔸𝕫",
  "...!!!???---___===+++###",
  "a".repeat(3000),
  " ".repeat(500) + "x",
];

/** A long text mixing everything above, to catch state carried across pre-token boundaries. */
export const LONG = Array.from({ length: 40 }, (_, i) => CORPUS[i % CORPUS.length] + (i % 3 ? "\n" : " ")).join("");

/** Reproducible random strings built from awkward pieces. */
export function fuzzStrings(count: number, seed: number): string[] {
  const pieces = [
    " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u200d", "a", "Z", "é", "e\u0301", "日", "한", "ि", "٣", "²", "🙂", "👍🏽",
    "'s", "'LL", "’s", "1", "99", ".", "...", "-", "{", "<|im_start|>", "<|endoftext|>", "<think>", "<|im", "|>", "\u0000", "𝒳", "K",
  ]; // prettier-ignore
  let state = seed;
  const next = (n: number) => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return state % n;
  };
  return Array.from({ length: count }, () => Array.from({ length: 1 + next(12) }, () => pieces[next(pieces.length)]).join(""));
}
