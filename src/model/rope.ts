import type { Backend, RopeTable } from "../backend/backend.js";
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

/** cos/sin tables for positions [0, maxPositions), computed once at load like HF does (f32 angles). */
export function buildRopeTable(backend: Backend, config: ModelConfig, maxPositions: number): RopeTable {
  const rotaryDim = config.headDim;
  const half = rotaryDim / 2;
  const inv = Float32Array.from(inverseFrequencies(config, rotaryDim));
  const cos = new Float32Array(maxPositions * half);
  const sin = new Float32Array(maxPositions * half);
  const angle = new Float32Array(1);
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      angle[0] = p * inv[i]!;
      cos[p * half + i] = Math.cos(angle[0]!);
      sin[p * half + i] = Math.sin(angle[0]!);
    }
  }
  const cosT = backend.alloc([maxPositions, half], "f32", "weights", "rope.cos");
  const sinT = backend.alloc([maxPositions, half], "f32", "weights", "rope.sin");
  backend.write(cosT, cos);
  backend.write(sinT, sin);
  return { cos: cosT, sin: sinT, rotaryDim, maxPositions };
}
