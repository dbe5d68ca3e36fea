import { sampleRows } from "../backend/cpu/sample.js";
import { SamplingTable } from "./sampling-table.js";
import { settled, type ScheduledSequence, type StepExecutor, type StepInput, type StepOutput } from "./step.js";

/**
 * An executor over a model whose logits are computed on the host (test models, reference models): it
 * keeps the persistent batch's sampling rows and samples with the CPU sampling op, so everything but
 * the forward pass is what the real runner does.
 */
export abstract class HostLogitsExecutor implements StepExecutor {
  readonly sampling = new SamplingTable();
  abstract readonly vocabSize: number;

  /** Logits [sampled sequences, vocab] for the step's sequences with `sample`, in order (the forward pass). */
  protected abstract forward(seqs: readonly ScheduledSequence[]): Float32Array;

  execute(step: StepInput): Promise<StepOutput> {
    return settled(() => this.run(step));
  }

  run(step: StepInput): StepOutput {
    this.sampling.apply(step);
    const rows = this.sampling.rowsFor(step.seqs);
    const logits = this.forward(step.seqs);
    const V = this.vocabSize;
    if (logits.length < rows.length * V) throw new Error(`executor: ${logits.length / V} logits rows for ${rows.length} sampled sequences`);
    const out = sampleRows(logits, 0, V, V, rows);
    this.sampling.accept(rows, out.tokens);
    return out;
  }
}
