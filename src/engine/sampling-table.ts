import { type SampleRow, SamplingRow } from "../backend/sampling.js";
import type { ScheduledSequence, StepInput } from "./step.js";

/**
 * The sampling half of an executor's persistent batch: each request's SamplingRow (settings, random key,
 * output-token counts, the prompt's token set) kept from the step it enters to the step it leaves, and
 * updated with every token sampled for it.
 */
export class SamplingTable {
  private rows = new Map<string, SamplingRow>();

  /** Take the step's diff: rows leave, then rows enter. */
  apply(step: StepInput): void {
    for (const id of step.removed) this.rows.delete(id);
    for (const a of step.added) {
      if (this.rows.has(a.id)) throw new Error(`persistent batch: request ${a.id} was added twice without being removed`);
      this.rows.set(a.id, new SamplingRow(a.sampling, a.promptTokenIds, a.outputTokenIds));
    }
  }

  /** The rows sampled this step, in the order of `seqs` (those with `sample`). */
  rowsFor(seqs: readonly ScheduledSequence[]): SampleRow[] {
    const out: SampleRow[] = [];
    for (const s of seqs) {
      if (!s.sample) continue;
      const row = this.rows.get(s.id);
      if (!row) throw new Error(`persistent batch: request ${s.id} is scheduled but was never added`);
      out.push(s.mask ? { row, mask: s.mask } : { row });
    }
    return out;
  }

  /** Record what was sampled, so the next step's penalties and draws follow on. */
  accept(rows: readonly SampleRow[], tokens: Int32Array): void {
    for (let i = 0; i < rows.length; i++) rows[i]!.row.accept(tokens[i]!);
  }

  has(id: string): boolean {
    return this.rows.has(id);
  }

  get size(): number {
    return this.rows.size;
  }
}
