/**
 * A deliberately plain Llama-family forward pass in f64, written from the
 * Hugging Face modeling code's semantics and sharing nothing with src/model:
 * dense causal attention over the whole sequence, no cache, no fusion.
 * It is the in-repo reference the paged, fused forward is compared to.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { decodeFloats, denseDType } from "../../src/backend/dtype.js";
import { SafetensorsCheckpoint } from "../../src/formats/safetensors.js";

type Cfg = Record<string, unknown> & {
  architectures: string[];
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads?: number;
  head_dim?: number;
  rms_norm_eps: number;
  rope_theta?: number;
  rope_scaling?: Record<string, number | string> | null;
  vocab_size: number;
  tie_word_embeddings?: boolean;
};

export class ReferenceLlama {
  private cfg: Cfg;
  private w = new Map<string, Float64Array>();

  constructor(dir: string) {
    this.cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Cfg;
    const ckpt = new SafetensorsCheckpoint(dir);
    for (const [name, info] of ckpt.tensors) {
      const bytes = new Uint8Array(info.byteLength);
      ckpt.readInto(info, bytes);
      const n = info.shape.reduce((a, b) => a * b, 1);
      this.w.set(name, Float64Array.from(decodeFloats(bytes, denseDType(info.dtype, name), n)));
    }
    ckpt.close();
  }

  private get(name: string): Float64Array {
    const t = this.w.get(name);
    if (!t) throw new Error(`reference: missing ${name}`);
    return t;
  }

  private invFreq(dim: number): number[] {
    const base = this.cfg.rope_theta ?? 10000;
    const inv = Array.from({ length: dim / 2 }, (_, i) => 1 / Math.pow(base, (2 * i) / dim));
    const rs = this.cfg.rope_scaling;
    const type = rs ? (rs.rope_type ?? rs.type) : undefined;
    if (type === "linear") return inv.map((f) => f / (rs!.factor as number));
    if (type === "llama3") {
      const factor = rs!.factor as number;
      const lo = rs!.low_freq_factor as number;
      const hi = rs!.high_freq_factor as number;
      const old = rs!.original_max_position_embeddings as number;
      return inv.map((f) => {
        const wl = (2 * Math.PI) / f;
        if (wl < old / hi) return f;
        if (wl > old / lo) return f / factor;
        const smooth = (old / wl - lo) / (hi - lo);
        return (1 - smooth) * (f / factor) + smooth * f;
      });
    }
    return inv;
  }

  /** Logits of the next token after every prefix of `tokens` that `positions` lists (default: the last). */
  logits(tokens: number[], positions = [tokens.length - 1]): Float64Array[] {
    const c = this.cfg;
    const H = c.hidden_size;
    const Hq = c.num_attention_heads;
    const Hkv = c.num_key_value_heads ?? Hq;
    const D = c.head_dim ?? H / Hq;
    const I = c.intermediate_size;
    const T = tokens.length;
    const arch = c.architectures[0];
    const eps = c.rms_norm_eps;
    const emb = this.get("model.embed_tokens.weight");
    let h = tokens.map((t) => emb.slice(t * H, (t + 1) * H));
    const inv = this.invFreq(D);
    const rope = (x: Float64Array, pos: number) => {
      const half = D / 2;
      const out = new Float64Array(D);
      for (let i = 0; i < half; i++) {
        // HF computes the angle in f32.
        const ang = Math.fround(Math.fround(pos) * Math.fround(inv[i]!));
        const cs = Math.cos(ang);
        const sn = Math.sin(ang);
        out[i] = x[i]! * cs - x[i + half]! * sn;
        out[i + half] = x[i + half]! * cs + x[i]! * sn;
      }
      return out;
    };
    const rms = (x: Float64Array, w: Float64Array) => {
      let ss = 0;
      for (const v of x) ss += v * v;
      const inv = 1 / Math.sqrt(ss / x.length + eps);
      return x.map((v, i) => v * inv * w[i]!);
    };
    const lin = (x: Float64Array, name: string, rows: number, bias?: string) => {
      const W = this.get(name);
      const K = x.length;
      const b = bias && this.w.has(bias) ? this.get(bias) : undefined;
      const out = new Float64Array(rows);
      for (let r = 0; r < rows; r++) {
        let s = b ? b[r]! : 0;
        for (let k = 0; k < K; k++) s += W[r * K + k]! * x[k]!;
        out[r] = s;
      }
      return out;
    };
    for (let l = 0; l < c.num_hidden_layers; l++) {
      const p = `model.layers.${l}`;
      const x = h.map((v) => rms(v, this.get(`${p}.input_layernorm.weight`)));
      const heads = (v: Float64Array, n: number) => Array.from({ length: n }, (_, i) => v.slice(i * D, (i + 1) * D));
      const qs = x.map((v) => heads(lin(v, `${p}.self_attn.q_proj.weight`, Hq * D, `${p}.self_attn.q_proj.bias`), Hq));
      const ks = x.map((v) => heads(lin(v, `${p}.self_attn.k_proj.weight`, Hkv * D, `${p}.self_attn.k_proj.bias`), Hkv));
      const vs = x.map((v) => heads(lin(v, `${p}.self_attn.v_proj.weight`, Hkv * D, `${p}.self_attn.v_proj.bias`), Hkv));
      if (arch === "Qwen3ForCausalLM") {
        for (const q of qs) for (let i = 0; i < Hq; i++) q[i] = rms(q[i]!, this.get(`${p}.self_attn.q_norm.weight`));
        for (const k of ks) for (let i = 0; i < Hkv; i++) k[i] = rms(k[i]!, this.get(`${p}.self_attn.k_norm.weight`));
      }
      const qr = qs.map((q, t) => q.map((hd) => rope(hd, t)));
      const kr = ks.map((k, t) => k.map((hd) => rope(hd, t)));
      const attn = qr.map((q, t) => {
        const out = new Float64Array(Hq * D);
        for (let hh = 0; hh < Hq; hh++) {
          const kvh = Math.floor(hh / (Hq / Hkv));
          const sc: number[] = [];
          for (let s = 0; s <= t; s++) {
            let d = 0;
            for (let i = 0; i < D; i++) d += q[hh]![i]! * kr[s]![kvh]![i]!;
            sc.push(d / Math.sqrt(D));
          }
          const m = Math.max(...sc);
          const e = sc.map((v) => Math.exp(v - m));
          const z = e.reduce((a, b) => a + b, 0);
          for (let s = 0; s <= t; s++) for (let i = 0; i < D; i++) out[hh * D + i] = out[hh * D + i]! + (e[s]! / z) * vs[s]![kvh]![i]!;
        }
        return out;
      });
      h = h.map((v, t) => {
        const o = lin(attn[t]!, `${p}.self_attn.o_proj.weight`, H, `${p}.self_attn.o_proj.bias`);
        return v.map((a, i) => a + o[i]!);
      });
      h = h.map((v) => {
        const y = rms(v, this.get(`${p}.post_attention_layernorm.weight`));
        const g = lin(y, `${p}.mlp.gate_proj.weight`, I);
        const u = lin(y, `${p}.mlp.up_proj.weight`, I);
        const a = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]!);
        const d = lin(a, `${p}.mlp.down_proj.weight`, H);
        return v.map((hv, i) => hv + d[i]!);
      });
    }
    const head = this.w.has("lm_head.weight") && !c.tie_word_embeddings ? "lm_head.weight" : "model.embed_tokens.weight";
    return positions.map((t) => {
      if (t < 0 || t >= T) throw new RangeError(`position ${t}`);
      return lin(rms(h[t]!, this.get("model.norm.weight")), head, c.vocab_size);
    });
  }
}
