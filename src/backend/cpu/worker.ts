// A CPU backend worker: sleeps on its wake word, runs the slices it is sent, counts down PENDING.
import { type MessagePort, receiveMessageOnPort, workerData } from "node:worker_threads";
import { Scratch } from "./kernels.js";
import { runTask, type TaskMessage } from "./pool.js";

const { ctrl, index, tasks, errors, linearModule, attentionModule, quantModule, kernelMemory, slot } = workerData as {
  ctrl: Int32Array;
  index: number;
  tasks: MessagePort;
  errors: MessagePort;
  linearModule: WebAssembly.Module | null;
  attentionModule: WebAssembly.Module | null;
  quantModule: WebAssembly.Module | null;
  kernelMemory: WebAssembly.Memory;
  slot: number;
};
const PENDING = 0;
const FAILED = 1;
const scratch = new Scratch(linearModule, attentionModule, { memory: kernelMemory, module: quantModule, slot });

let seen = 0;
for (;;) {
  Atomics.wait(ctrl, index, seen);
  seen = Atomics.load(ctrl, index);
  for (let m = receiveMessageOnPort(tasks); m; m = receiveMessageOnPort(tasks)) {
    const { task, start, end } = m.message as TaskMessage;
    try {
      runTask(task, start, end, scratch);
    } catch (err) {
      errors.postMessage(String((err as Error)?.stack ?? err));
      Atomics.store(ctrl, FAILED, 1);
    }
    if (Atomics.sub(ctrl, PENDING, 1) === 1) Atomics.notify(ctrl, PENDING);
  }
}
