import { readFileSync, statSync } from "node:fs";

/**
 * Throws `error` when `path` exists but is not a regular file. Checked before
 * opening: open() on a FIFO blocks until a writer comes (so a load would hang
 * forever), and reading a directory fails with a bare EISDIR.
 */
export function checkRegularFile(path: string, error: new (message: string) => Error): void {
  const s = statSync(path, { throwIfNoEntry: false });
  if (!s || s.isFile()) return;
  const kind = s.isDirectory() ? "a directory" : s.isFIFO() ? "a FIFO (named pipe)" : s.isSocket() ? "a socket" : "a device";
  throw new error(`${path}: is ${kind}, not a regular file`);
}

/** Parse a JSON file that must be a regular file, naming the file in any error (thrown as `error`). */
export function readJsonFile(path: string, error: new (message: string) => Error): unknown {
  checkRegularFile(path, error);
  try {
    return JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new error(`${path}: not valid JSON (${(err as Error).message})`);
  }
}
