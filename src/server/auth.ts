/**
 * The API key. Which routes it protects is decided from the route that
 * matched (the router decodes `/%76%31/models` and absolute-form targets to
 * `/v1/models`), never from the raw URL string; keys are compared in
 * constant time.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyInstance } from "fastify";
import { ApiError } from "./errors.js";

declare module "fastify" {
  interface FastifyContextConfig {
    /** Served without the API key (/health, /version, the dashboard's static page). */
    public?: boolean;
  }
}

type Headers = Record<string, string | string[] | undefined>;

/** Why a configured key cannot work, or null. HTTP strips a header's trailing whitespace, so such a key could never match exactly. */
export function apiKeyProblem(key: string): string | null {
  if (key.length === 0) return "the API key is empty";
  if (/^\s|\s$/.test(key)) return "the API key begins or ends with whitespace, which HTTP strips from headers; remove it";
  if (/[^\x21-\x7e]/.test(key)) return "the API key must be printable ASCII without spaces (it travels in an HTTP header)";
  return null;
}

const digest = (s: string) => createHash("sha256").update(s, "utf8").digest();

/** A checker for `Authorization: Bearer <key>`; throws a 401 ApiError when the key is missing or wrong. */
export function bearerCheck(apiKey: string | undefined): (headers: Headers) => void {
  if (apiKey === undefined) return () => undefined;
  const problem = apiKeyProblem(apiKey);
  if (problem) throw new Error(`--api-key: ${problem}`);
  const expected = digest(apiKey);
  return (headers) => {
    const auth = headers.authorization;
    const given = typeof auth === "string" ? /^Bearer (.*)$/is.exec(auth)?.[1] : undefined;
    // Equal-length digests: the comparison takes the same time whatever the key's length or first wrong byte.
    if (given !== undefined && timingSafeEqual(digest(given), expected)) return;
    const message = auth ? "incorrect API key provided" : "missing API key: send Authorization: Bearer <key>";
    throw new ApiError(401, message, "authentication_error", null, "invalid_api_key");
  };
}

/**
 * Every request needs the key unless the route it matched says `public: true` (or is `/metrics` with
 * `metricsNoAuth`). One global hook, read from the matched route, so the order routes are registered in
 * cannot leave one unprotected; a request that matched no route needs the key too (401 before 404).
 */
export function protectRoutes(app: FastifyInstance, check: (headers: Headers) => void, metricsNoAuth: boolean): void {
  app.addHook("onRequest", async (request) => {
    const route = request.routeOptions;
    if (route.config?.public === true || (metricsNoAuth && route.url === "/metrics")) return;
    check(request.headers);
  });
}
