/** A synchronous call as a promise: its result, or its error as a rejection (never a throw). */
export function settled<T>(run: () => T): Promise<T> {
  try {
    return Promise.resolve(run());
  } catch (err) {
    return Promise.reject(err as Error);
  }
}
