/**
 * Tokenizing and chat-template rendering of large inputs in a worker thread,
 * so a megabyte prompt does not stall every other client on the event loop.
 * Small inputs stay on the calling thread: a message round trip costs more
 * than encoding a few kilobytes.
 */
import { Worker } from "node:worker_threads";
import { type ChatMessage, ChatTemplateError, type ChatTemplateOptions } from "../tokenizer/chat-template.js";
import type { Tokenizer } from "../tokenizer/tokenizer.js";

type JobBody =
  { kind: "texts"; texts: string[]; addSpecialTokens: boolean } | { kind: "chat"; messages: ChatMessage[]; options: ChatTemplateOptions };
export type TokenizeJob = { id: number } & JobBody;
export type TokenizeReply = { id: number } & (
  { ids: number[][]; error?: undefined } | { error: { name: string; message: string; where?: string; detail?: string } }
);

/** Inputs of more characters than this (in all) go to the worker. */
export const OFF_THREAD_CHARS = 32 * 1024;
/** Characters queued for the worker at most; past this, new large inputs are refused until it catches up. */
export const MAX_QUEUED_CHARS = 256 * 2 ** 20;

/** The worker's queue is full: the caller should answer 503 and let the client retry. */
export class TokenizerBusyError extends Error {
  constructor(queued: number) {
    super(`the tokenizer has ${queued} characters queued; retry shortly`);
    this.name = "TokenizerBusyError";
  }
}

export class OffThreadTokenizer {
  private worker: Worker | null = null;
  private nextId = 0;
  private readonly pending = new Map<number, { chars: number; resolve: (ids: number[][]) => void; reject: (e: Error) => void }>();
  private queuedChars = 0;

  constructor(
    private readonly local: Tokenizer,
    /** The model folder the worker loads its own tokenizer from; undefined keeps everything on this thread. */
    private readonly modelDir: string | undefined,
  ) {}

  /** Encode several texts; their total size picks the thread (a batch of many mid-sized prompts is large too). */
  async encodeAll(texts: string[], addSpecialTokens: boolean): Promise<number[][]> {
    const chars = texts.reduce((n, t) => n + t.length, 0);
    if (chars <= OFF_THREAD_CHARS || !this.modelDir) return texts.map((t) => this.local.encode(t, { addSpecialTokens }));
    return this.submit({ kind: "texts", texts, addSpecialTokens }, chars);
  }

  /** Render the chat template and encode it; `chars` is the conversation's size, which picks the thread. */
  async encodeChat(messages: ChatMessage[], options: ChatTemplateOptions, chars: number): Promise<number[]> {
    if (chars <= OFF_THREAD_CHARS || !this.modelDir) {
      return this.local.encode(this.local.applyChatTemplate(messages, options), { addSpecialTokens: false });
    }
    return (await this.submit({ kind: "chat", messages, options }, chars))[0]!;
  }

  close(): Promise<number> | undefined {
    const w = this.worker;
    this.worker = null;
    return w?.terminate();
  }

  private submit(job: JobBody, chars: number): Promise<number[][]> {
    if (this.queuedChars + chars > MAX_QUEUED_CHARS) return Promise.reject(new TokenizerBusyError(this.queuedChars));
    const worker = this.start();
    const id = this.nextId++;
    this.queuedChars += chars;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { chars, resolve, reject });
      worker.postMessage({ ...job, id });
    });
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(new URL("./tokenize-worker.js", import.meta.url), { workerData: this.modelDir });
    w.unref(); // an idle tokenizer never keeps the process alive
    w.on("message", (r: TokenizeReply) => this.settle(r));
    w.on("error", (err) => this.failAll(err));
    w.on("exit", (code) => {
      if (this.worker === w) this.worker = null;
      this.failAll(new Error(`the tokenizer thread exited (code ${code})`));
    });
    this.worker = w;
    return w;
  }

  private settle(r: TokenizeReply): void {
    const p = this.pending.get(r.id);
    this.pending.delete(r.id);
    if (!p) return;
    this.queuedChars -= p.chars;
    if (r.error === undefined) return p.resolve(r.ids);
    const e = r.error;
    p.reject(
      e.name === "ChatTemplateError"
        ? new ChatTemplateError(e.where ?? "", e.detail ?? e.message)
        : Object.assign(new Error(e.message), { name: e.name }),
    );
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.queuedChars = 0;
  }
}
