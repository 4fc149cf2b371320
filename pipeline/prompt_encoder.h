// Prompt text -> the UNet's text conditioning, for both pipeline families:
//  - SD 1.x/2.x: tokenizer + text_encoder (CLIPTextModel), last_hidden_state [1, 77, D];
//  - SDXL: tokenizer + text_encoder (CLIPTextModel) and tokenizer_2 + text_encoder_2
//    (CLIPTextModelWithProjection); the embedding is both encoders' penultimate hidden states
//    concatenated [1, 77, D1 + D2], the pooled embedding text_encoder_2's text_embeds [1, P].
// Ref: diffusers v0.27.2 StableDiffusionPipeline.encode_prompt (clip_skip None) and
// StableDiffusionXLPipeline.encode_prompt (prompt_2 = prompt, clip_skip None).
// With a1111 = true: A1111's prompt syntax and long prompts, Ref:
// stable-diffusion-webui modules/sd_hijack_clip.py FrozenCLIPEmbedderWithCustomWordsBase.forward
// / process_tokens and sd_emphasis.EmphasisOriginal: the prompt in 75-token chunks
// (pipeline/text/prompt_chunks.h), each chunk encoded as the plain path encodes its 77 ids
// (one batch of chunks per encoder), each chunk's output multiplied by its token weights and
// scaled back to its own mean (z * (mean before / mean after), in float32), the chunks
// concatenated along the sequence: [1, 77 * chunks, D]. SDXL: both encoders, each with its own
// tokenizer, chunked and weighted separately (a prompt whose two tokenisations give different
// chunk counts has the shorter padded with empty chunks), the pooled embedding from chunk 0 of
// text_encoder_2 (unweighted, as A1111's zs[0].pooled). A prompt whose weights are all 1 skips
// the weighting (it is the identity), so "(word:1.0)" and a short plain prompt give exactly the
// plain path's tensors.
// Owner: one StableDiffusion replica; encode() from its worker thread only (the cache and the
// modules are not thread-safe).
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include <torch/torch.h>

#include "pipeline/clip_text_model.h"
#include "pipeline/lora.h"
#include "pipeline/model_folder.h"
#include "pipeline/text/clip_tokenizer.h"

namespace diffusiond {

struct PromptEmbedding {
  torch::Tensor embeds;  // [1, 77, cross_attention_dim] in the model dtype, on the device
  torch::Tensor pooled;  // [1, P] (SDXL), undefined for SD 1.x/2.x
};

class PromptEncoder {
 public:
  // xl: load the SDXL pair (text_encoder_2 / tokenizer_2 required). cache_capacity: prompts kept
  // (least recently used evicted first).
  PromptEncoder(const ModelFolder& model, bool xl, torch::Device device, torch::ScalarType dtype,
                std::size_t cache_capacity = 64);

  PromptEmbedding encode(const std::string& prompt, bool a1111 = false);
  // The same shapes as encode(prompt ""), all zeros (force_zeros_for_empty_prompt).
  PromptEmbedding zeros();
  // The sequence length encode(prompt, a1111) gives (77; a1111: 77 x chunks) from the
  // tokenizers alone (no encoder run): what a batch of prompts must share.
  int64_t sequence_length(const std::string& prompt, bool a1111) const;

  // Forgets every cached embedding (the text encoders' weights changed: a LoRA set).
  void clear_cache();
  // CPU: the text encoders' weights used in place from a file mapping and never written leave
  // this process's resident set (SafetensorsMap::release_resident_pages); the next encode()
  // faults them in again from the page cache. The encoders run once per generation, before
  // the denoising loop: this keeps their ~0.33 GiB (SD 1.5) out of the peak, which is the VAE
  // decode, at the cost of re-mapping their pages at the next encode(). A no-op for weights
  // not mapped from a file (CUDA, a dtype conversion, a LoRA merge). Returns the bytes released.
  std::size_t release_resident_weights();
  // The text encoders as LoRA targets ("text_encoder", "text_encoder_2" for SDXL).
  std::vector<LoraTarget> lora_targets() const;

  bool xl() const { return static_cast<bool>(text_encoder_2_); }
  int64_t pooled_dim() const;  // projection_dim of text_encoder_2 (0 for SD 1.x/2.x)
  // The token ids each tokenizer gives (77 each; ids_2 empty for SD 1.x/2.x), for tests.
  std::vector<int64_t> ids(const std::string& prompt) const;
  std::vector<int64_t> ids_2(const std::string& prompt) const;

 private:
  PromptEmbedding compute(const std::string& prompt);
  PromptEmbedding compute_a1111(const std::string& prompt);

  torch::Device device_;
  torch::ScalarType dtype_;
  ClipTokenizer tokenizer_;
  ClipTextModel text_encoder_;
  std::optional<ClipTokenizer> tokenizer_2_;
  ClipTextModel text_encoder_2_{nullptr};

  std::size_t capacity_;
  std::list<std::pair<std::string, PromptEmbedding>> entries_;  // most recently used first
  std::unordered_map<std::string, std::list<std::pair<std::string, PromptEmbedding>>::iterator>
      index_;
};

}  // namespace diffusiond
