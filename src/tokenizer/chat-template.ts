import { Template } from "@huggingface/jinja";

/** One chat turn. Templates may read more fields than these (tool_calls, reasoning_content, name). */
export interface ChatMessage {
  role: string;
  content: string;
  [field: string]: unknown;
}

export interface ChatTemplateOptions {
  /** End with the opening of an assistant turn, so the model writes the reply. */
  addGenerationPrompt?: boolean;
  /** Tool (function) definitions, passed to the template as `tools`. */
  tools?: unknown;
  /** More template variables, e.g. `{ enable_thinking: false }` for Qwen3. */
  extra?: Record<string, unknown>;
}

export class ChatTemplateError extends Error {
  constructor(
    /** The file the template came from. */
    readonly where: string,
    /** What went wrong, without the file (a server shows this, not its filesystem paths). */
    readonly detail: string,
  ) {
    super(`${where}: ${detail}`);
    this.name = "ChatTemplateError";
  }
}

/**
 * The Jinja chat templates of a model, by name. tokenizer_config.json holds either
 * one template (a string, named "default") or a list of `{name, template}`.
 */
export class ChatTemplates {
  private parsed = new Map<string, Template>();

  private constructor(
    private readonly sources: ReadonlyMap<string, string>,
    private readonly where: string,
  ) {}

  /** Read the `chat_template` value of tokenizer_config.json; undefined when the model has none. */
  static fromConfigValue(value: unknown, where: string): ChatTemplates | undefined {
    if (value == null) return undefined;
    if (typeof value === "string") return new ChatTemplates(new Map([["default", value]]), where);
    if (!Array.isArray(value)) {
      throw new ChatTemplateError(where, `"chat_template" must be a string or a list of {name, template}, got ${typeof value}`);
    }
    const sources = new Map<string, string>();
    for (const entry of value as unknown[]) {
      const e = entry as { name?: unknown; template?: unknown } | null;
      if (typeof e?.name !== "string" || typeof e.template !== "string") {
        throw new ChatTemplateError(where, `each "chat_template" list entry must be {"name": string, "template": string}`);
      }
      sources.set(e.name, e.template);
    }
    return new ChatTemplates(sources, where);
  }

  get names(): string[] {
    return [...this.sources.keys()];
  }

  /** Render `messages`; `specialTokens` (bos_token, eos_token, ...) are visible to the template as Transformers passes them. */
  render(messages: ChatMessage[], opts: ChatTemplateOptions, specialTokens: Record<string, string>): string {
    const variables: Record<string, unknown> = {
      ...specialTokens,
      ...opts.extra,
      messages,
      add_generation_prompt: opts.addGenerationPrompt ?? false,
    };
    if (opts.tools !== undefined) variables.tools = opts.tools;
    const name = this.pick(opts.tools !== undefined);
    try {
      return this.template(name).render(variables);
    } catch (err) {
      throw new ChatTemplateError(this.where, `chat template "${name}" failed to render: ${(err as Error).message}`);
    }
  }

  // Transformers' rule: the "tool_use" template when tools are given and it exists, else "default".
  private pick(withTools: boolean): string {
    if (withTools && this.sources.has("tool_use")) return "tool_use";
    if (this.sources.has("default")) return "default";
    if (this.sources.size === 1) return this.names[0]!;
    throw new ChatTemplateError(this.where, `no "default" chat template among ${JSON.stringify(this.names)}`);
  }

  // Parsed on first use: a model whose template does not parse still serves plain completions.
  private template(name: string): Template {
    let t = this.parsed.get(name);
    if (!t) {
      try {
        t = new Template(this.sources.get(name)!);
      } catch (err) {
        throw new ChatTemplateError(this.where, `chat template "${name}" does not parse: ${(err as Error).message}`);
      }
      this.parsed.set(name, t);
    }
    return t;
  }
}
