/** Server-sent events: one `data:` line per event, headers flushed at once, `[DONE]` last (OpenAI's stream framing). */
import type { ServerResponse } from "node:http";
import type { FastifyReply } from "fastify";

/** Take the response over from Fastify and open an event stream on it. */
export function openEventStream(reply: FastifyReply): ServerResponse {
  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    connection: "keep-alive",
    "x-accel-buffering": "no",
  });
  // Send the headers now: a request waiting for a batch slot may emit nothing for a long time, and clients time out on headers.
  raw.flushHeaders();
  return raw;
}

/** One event; nothing once the stream has ended or the client has gone. */
export function sendEvent(raw: ServerResponse, data: unknown): void {
  if (!raw.writableEnded && !raw.destroyed) raw.write(`data: ${JSON.stringify(data)}\n\n`);
}

export function endEventStream(raw: ServerResponse): void {
  if (!raw.writableEnded && !raw.destroyed) raw.end("data: [DONE]\n\n");
}

/**
 * Chunks of one OpenAI stream: the envelope (id, object, created, model, and `usage: null` when usage is
 * asked for) is serialized once, and each chunk writes only its choice into it.
 */
export class ChunkWriter {
  private readonly head: string;
  private readonly tail: string;

  constructor(
    private readonly raw: ServerResponse,
    private readonly base: Record<string, unknown>,
    includeUsage: boolean,
  ) {
    const envelope = JSON.stringify({ ...base, choices: [] });
    this.head = `data: ${envelope.slice(0, -3)}[`; // up to `"choices":[`
    this.tail = includeUsage ? '],"usage":null}\n\n' : "]}\n\n";
  }

  /** One chunk holding one choice. */
  choice(choice: unknown): void {
    if (!this.raw.writableEnded && !this.raw.destroyed) this.raw.write(this.head + JSON.stringify(choice) + this.tail);
  }

  /** The final usage chunk (no choices). */
  usage(usage: unknown): void {
    sendEvent(this.raw, { ...this.base, choices: [], usage });
  }
}
