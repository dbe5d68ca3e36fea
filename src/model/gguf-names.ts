/**
 * llama.cpp's names for the per-layer tensors of the Llama family, by their Hugging Face name
 * within a layer (model.layers.N.<key> ↔ blk.N.<value>): the converter writes them, the GGUF
 * loader reads them.
 */
export const GGUF_LAYER_TENSORS: Readonly<Record<string, string>> = {
  "input_layernorm.weight": "attn_norm.weight",
  "self_attn.q_proj.weight": "attn_q.weight",
  "self_attn.q_proj.bias": "attn_q.bias",
  "self_attn.k_proj.weight": "attn_k.weight",
  "self_attn.k_proj.bias": "attn_k.bias",
  "self_attn.v_proj.weight": "attn_v.weight",
  "self_attn.v_proj.bias": "attn_v.bias",
  "self_attn.o_proj.weight": "attn_output.weight",
  "self_attn.o_proj.bias": "attn_output.bias",
  "self_attn.q_norm.weight": "attn_q_norm.weight",
  "self_attn.k_norm.weight": "attn_k_norm.weight",
  "post_attention_layernorm.weight": "ffn_norm.weight",
  "mlp.gate_proj.weight": "ffn_gate.weight",
  "mlp.gate_proj.bias": "ffn_gate.bias",
  "mlp.up_proj.weight": "ffn_up.weight",
  "mlp.up_proj.bias": "ffn_up.bias",
  "mlp.down_proj.weight": "ffn_down.weight",
  "mlp.down_proj.bias": "ffn_down.bias",
};

/** The GGUF name of a Hugging Face tensor of the Llama family, or undefined for one llama.cpp has no name for. */
export function hfToGgufName(hfName: string): string | undefined {
  if (hfName === "model.embed_tokens.weight") return "token_embd.weight";
  if (hfName === "model.norm.weight") return "output_norm.weight";
  if (hfName === "lm_head.weight") return "output.weight";
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hfName);
  const mapped = m ? GGUF_LAYER_TENSORS[m[2]!] : undefined;
  return m && mapped ? `blk.${m[1]}.${mapped}` : undefined;
}
