/** The worker thread behind OffThreadTokenizer: its own Tokenizer of the model folder, one job at a time. */
import { parentPort, workerData } from "node:worker_threads";
import { ChatTemplateError } from "../tokenizer/chat-template.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import type { TokenizeJob, TokenizeReply } from "./off-thread-tokenizer.js";

const tokenizer = Tokenizer.fromDir(workerData as string);
const port = parentPort!;

function run(job: TokenizeJob): number[][] {
  if (job.kind === "texts") return job.texts.map((t) => tokenizer.encode(t, { addSpecialTokens: job.addSpecialTokens }));
  const text = tokenizer.applyChatTemplate(job.messages, job.options);
  return [tokenizer.encode(text, { addSpecialTokens: false })];
}

port.on("message", (job: TokenizeJob) => {
  let reply: TokenizeReply;
  try {
    reply = { id: job.id, ids: run(job) };
  } catch (err) {
    const e = err as Error;
    reply = {
      id: job.id,
      error: { name: e.name, message: e.message, where: (e as ChatTemplateError).where, detail: (e as ChatTemplateError).detail },
    };
  }
  port.postMessage(reply);
});
