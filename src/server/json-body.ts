/**
 * Request bodies as JSON, with a nesting limit checked before parsing: no
 * OpenAI request nests deeper than a few levels, and deep values overflow the
 * stack of any recursive walk after the parse (validation, templates, logs).
 */
import type { FastifyInstance } from "fastify";
import { ApiError } from "./errors.js";

export const MAX_JSON_DEPTH = 64;

/** The deepest nesting of arrays and objects in a JSON text, stopping once past `limit`. One pass, strings skipped. */
export function jsonDepth(text: string, limit = Infinity): number {
  let depth = 0;
  let max = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // a string: skip to its closing quote, past escapes
      for (i++; i < text.length; i++) {
        const s = text.charCodeAt(i);
        if (s === 0x5c) i++;
        else if (s === 0x22) break;
      }
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > max && (max = depth) > limit) return max;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return max;
}

/** Replace Fastify's JSON parser with one that rejects deep nesting (400) and keeps its prototype-poisoning protection. */
export function registerJsonParser(app: FastifyInstance): void {
  const parse = app.getDefaultJsonParser("error", "error");
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "string" }, (request, body, done) => {
    const text = body as string;
    if (jsonDepth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) {
      done(
        new ApiError(
          400,
          `the request body nests arrays and objects more than ${MAX_JSON_DEPTH} levels deep; no request field needs that`,
          "invalid_request_error",
          "body",
          "invalid_json",
        ),
        undefined,
      );
      return;
    }
    parse(request, text, done);
  });
}
