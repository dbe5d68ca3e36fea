/** Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, with the HTTP status that goes with them. */

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | number | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = status === 401 ? "authentication_error" : status === 404 ? "not_found_error" : "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Extra response headers (Retry-After, ...). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }

  body(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 400 for a bad field, naming it. */
export function badParam(param: string, message: string): ApiError {
  return new ApiError(400, message, "invalid_request_error", param, "invalid_value");
}
