/**
 * A userspace delay line: a TCP relay that forwards every connection to `target` and holds each chunk
 * `delayMs` in each direction (so a request and its answer take 2 × delayMs longer), keeping the order
 * of the bytes and half-closes. A stand-in for `tc qdisc ... netem delay` where the kernel has no sch_netem.
 */
import { createServer, connect, type Server, type Socket } from "node:net";

export interface DelayLine {
  /** Where clients connect: 127.0.0.1:port (or the host asked for). */
  host: string;
  port: number;
  /** Connections relayed so far. */
  connections: () => number;
  close: () => Promise<void>;
}

/** Copy `from` to `to`, each chunk (and the end) `delayMs` after it arrived. */
function pipeDelayed(from: Socket, to: Socket, delayMs: number): void {
  const queue: { due: number; chunk: Buffer | null }[] = [];
  let timer: NodeJS.Timeout | undefined;
  const flush = () => {
    timer = undefined;
    const now = performance.now();
    while (queue.length > 0 && queue[0]!.due <= now + 0.5) {
      const { chunk } = queue.shift()!;
      if (to.destroyed) return;
      if (chunk === null) to.end();
      else to.write(chunk);
    }
    if (queue.length > 0) timer = setTimeout(flush, Math.max(0, queue[0]!.due - now));
  };
  const push = (chunk: Buffer | null) => {
    queue.push({ due: performance.now() + delayMs, chunk });
    timer ??= setTimeout(flush, delayMs);
  };
  from.on("data", (c: Buffer) => push(c));
  from.on("end", () => push(null));
  from.on("close", () => {
    // A reset (not a clean end) travels at once: there is nothing left to deliver in order.
    if (!from.readableEnded) to.destroy();
  });
}

export function startDelayLine(target: { host: string; port: number }, delayMs: number, listenHost = "127.0.0.1"): Promise<DelayLine> {
  const sockets = new Set<Socket>();
  let count = 0;
  const server: Server = createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
    count++;
    const upstream = connect({ host: target.host, port: target.port, allowHalfOpen: true, noDelay: true });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => undefined);
      s.on("close", () => sockets.delete(s));
    }
    pipeDelayed(client, upstream, delayMs);
    pipeDelayed(upstream, client, delayMs);
    // Both directions finished (or one side failed): nothing more can pass.
    const done = () => {
      if ((client.readableEnded && upstream.readableEnded) || client.destroyed || upstream.destroyed) {
        setTimeout(() => {
          client.destroy();
          upstream.destroy();
        }, delayMs + 5);
      }
    };
    client.on("close", done);
    upstream.on("close", done);
    client.on("end", done);
    upstream.on("end", done);
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, listenHost, () => {
      const addr = server.address();
      if (addr === null || typeof addr === "string") return reject(new Error("delay line: no port"));
      resolve({
        host: listenHost,
        port: addr.port,
        connections: () => count,
        close: () =>
          new Promise<void>((res) => {
            for (const s of sockets) s.destroy();
            server.close(() => res());
          }),
      });
    });
  });
}
