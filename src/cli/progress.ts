/** A byte progress bar on stderr when it is a terminal; silent otherwise (logs stay clean). */
export function progressBar(
  label: string,
  stream: NodeJS.WriteStream = process.stderr,
): ((done: number, total: number) => void) & { end(): void } {
  const tty = stream.isTTY === true;
  let lastDraw = 0;
  let drawn = false;
  const start = performance.now();
  const draw = (done: number, total: number) => {
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const width = 30;
    const fill = Math.round(frac * width);
    const secs = (performance.now() - start) / 1000;
    const mb = done / 2 ** 20;
    stream.write(
      `\r${label} [${"#".repeat(fill)}${" ".repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${mb.toFixed(0)} MiB ${(mb / Math.max(secs, 1e-3)).toFixed(0)} MiB/s`,
    );
    drawn = true;
  };
  const fn = (done: number, total: number) => {
    if (!tty) return;
    const now = performance.now();
    if (now - lastDraw < 100 && done < total) return;
    lastDraw = now;
    draw(done, total);
  };
  fn.end = () => {
    if (drawn) stream.write("\n");
  };
  return fn;
}
