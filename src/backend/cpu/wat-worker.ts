// A short-lived worker that assembles WebAssembly text with wabt for linearWasmModule(), which
// blocks on `signal` meanwhile: wabt only initializes asynchronously, while the backend is
// built synchronously. Any failure is reported as a message, never left to time out.
import { type MessagePort, workerData } from "node:worker_threads";

const { name, source, signal, port } = workerData as { name: string; source: string; signal: Int32Array; port: MessagePort };

try {
  // Imported here, not statically, so that a missing package is reported like any other error.
  const wabt = (await import("wabt")).default;
  // threads: sample.wat imports the shared memory the CPU backend keeps its activations in.
  const features = { simd: true, threads: true };
  const mod = (await wabt()).parseWat(name, source, features);
  try {
    // The typings omit validate's features argument, which wabt.js takes (and needs for shared memories).
    (mod.validate as (f: typeof features) => void)(features);
    port.postMessage({ bytes: mod.toBinary({}).buffer });
  } finally {
    mod.destroy();
  }
} catch (err) {
  port.postMessage({ error: String((err as Error)?.message ?? err) });
} finally {
  Atomics.store(signal, 0, 1);
  Atomics.notify(signal, 0);
}
