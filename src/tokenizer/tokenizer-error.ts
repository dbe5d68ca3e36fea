/** A tokenizer that cannot be loaded or built: the message names the file (or GGUF key) at fault. */
export class TokenizerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TokenizerError";
  }
}
