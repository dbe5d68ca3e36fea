import type { Backend, RopeTable } from "../backend/backend.js";
import type { Tensor } from "../backend/tensor.js";
import type { ModelConfig } from "./config.js";

/**
 * Rotary inverse frequencies θ_i = base^(-2i/d), adjusted by the model's
 * rope_scaling: "linear" divides every frequency by the factor (positions
 * interpolated); "llama3" divides only the low frequencies, leaves the high
 * ones and blends in between (Llama 3.1's long-context recipe).
 */
export function inverseFrequencies(config: ModelConfig, rotaryDim: number): Float64Array {
  const half = rotaryDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / config.ropeTheta ** ((2 * i) / rotaryDim);
  const s = config.ropeScaling;
  if (s.type === "linear") {
    for (let i = 0; i < half; i++) inv[i] = inv[i]! / s.factor;
  } else if (s.type === "factors") {
    for (let i = 0; i < half; i++) inv[i] = inv[i]! / (s.factors[i] ?? 1);
  } else if (s.type === "llama3") {
    const lowWavelen = s.originalMaxPositions / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositions / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const f = inv[i]!;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        inv[i] = f / s.factor;
      } else {
        const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        inv[i] = (1 - smooth) * (f / s.factor) + smooth * f;
      }
    }
  }
  return inv;
}

/** Positions computed per write: bounds the host memory the tables pass through, however long the context. */
const ROPE_CHUNK = 1 << 16;

/** cos/sin tables for positions [0, maxPositions), computed once at load like HF does (f32 angles). */
export function buildRopeTable(backend: Backend, config: ModelConfig, maxPositions: number): RopeTable {
  const rotaryDim = config.headDim;
  const half = rotaryDim / 2;
  const inv = Float32Array.from(inverseFrequencies(config, rotaryDim));
  const cosT = backend.alloc([maxPositions, half], "f32", "weights", "rope.cos");
  let sinT: Tensor;
  try {
    sinT = backend.alloc([maxPositions, half], "f32", "weights", "rope.sin");
  } catch (err) {
    backend.free(cosT.storage);
    throw err;
  }
  const angle = new Float32Array(1);
  for (let start = 0; start < maxPositions; start += ROPE_CHUNK) {
    const n = Math.min(ROPE_CHUNK, maxPositions - start);
    const cos = new Float32Array(n * half);
    const sin = new Float32Array(n * half);
    for (let p = 0; p < n; p++) {
      for (let i = 0; i < half; i++) {
        angle[0] = (start + p) * inv[i]!;
        cos[p * half + i] = Math.cos(angle[0]!);
        sin[p * half + i] = Math.sin(angle[0]!);
      }
    }
    backend.write(cosT.rows(start, n), cos);
    backend.write(sinT.rows(start, n), sin);
  }
  return { cos: cosT, sin: sinT, rotaryDim, maxPositions };
}
