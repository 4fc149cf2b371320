#include "pipeline/prompt_encoder.h"

#include <algorithm>

#include "pipeline/component_weights.h"
#include "pipeline/media/config_util.h"
#include "pipeline/media/safetensors_map.h"
#include "pipeline/text/prompt_chunks.h"

namespace diffusiond {
namespace {

torch::Tensor ids_tensor(const std::vector<int64_t>& ids, torch::Device device) {
  return torch::tensor(ids, torch::kInt64).unsqueeze(0).to(device);  // [1, 77]
}

// hidden_states[-2]: the penultimate layer's output (before final_layer_norm).
const torch::Tensor& penultimate(const ClipTextOutput& out) {
  TORCH_CHECK(out.hidden_states.size() >= 2, "CLIP text model has no penultimate hidden state");
  return out.hidden_states[out.hidden_states.size() - 2];
}

// The chunks' ids as one batch: [chunks, 77] int64.
torch::Tensor chunk_ids_tensor(const std::vector<PromptChunk>& chunks, torch::Device device) {
  std::vector<int64_t> flat;
  for (const auto& c : chunks) flat.insert(flat.end(), c.ids.begin(), c.ids.end());
  return torch::tensor(flat, torch::kInt64)
      .view({static_cast<int64_t>(chunks.size()), -1})
      .to(device);
}

// Ref: sd_emphasis.EmphasisOriginal.after_transformers, per chunk. z: [chunks, 77, D] in the
// model dtype -> the same shape in float32 (A1111's multipliers are float32, so its product is):
// z * w, then * (mean of z / mean of z * w), each chunk over its own 77 x D values. Weights all
// 1: z unchanged (the identity, skipped so the plain path's values stay exact).
torch::Tensor apply_weights(const torch::Tensor& z, const std::vector<PromptChunk>& chunks) {
  std::vector<float> flat;
  for (const auto& c : chunks) flat.insert(flat.end(), c.weights.begin(), c.weights.end());
  if (std::all_of(flat.begin(), flat.end(), [](float w) { return w == 1.0f; })) return z;
  const auto weights = torch::tensor(flat, torch::kFloat32)
                           .view({static_cast<int64_t>(chunks.size()), -1, 1})
                           .to(z.device());  // [chunks, 77, 1]
  const auto original_mean = z.mean({1, 2}, /*keepdim=*/true).to(torch::kFloat32);  // [c, 1, 1]
  auto weighted = z.to(torch::kFloat32) * weights;
  const auto new_mean = weighted.mean({1, 2}, /*keepdim=*/true);
  return weighted * (original_mean / new_mean);
}

// Pads `chunks` with empty chunks to `count`.
void pad_chunks(std::vector<PromptChunk>& chunks, std::size_t count, const ClipTokenizer& tok) {
  while (chunks.size() < count) chunks.push_back(empty_chunk(chunk_ids(tok)));
}

}  // namespace

PromptEncoder::PromptEncoder(const ModelFolder& model, bool xl, torch::Device device,
                             torch::ScalarType dtype, std::size_t cache_capacity)
    : device_(device),
      dtype_(dtype),
      tokenizer_(ClipTokenizer::load(model.root / "tokenizer")),
      text_encoder_(load_clip_text_model(model.config_path("text_encoder"),
                                         *open_component_weights(model, "text_encoder"), device,
                                         dtype)),
      capacity_(cache_capacity) {
  text_encoder_->eval();
  if (xl) {
    tokenizer_2_.emplace(ClipTokenizer::load(model.root / "tokenizer_2"));
    text_encoder_2_ = load_clip_text_model(model.config_path("text_encoder_2"),
                                           *open_component_weights(model, "text_encoder_2"), device,
                                           dtype, /*with_projection=*/true);
    text_encoder_2_->eval();
  }
}

void PromptEncoder::clear_cache() {
  entries_.clear();
  index_.clear();
}

std::size_t PromptEncoder::release_resident_weights() {
  if (!device_.is_cpu()) return 0;
  std::size_t released = 0;
  for (const ClipTextModel& model : {text_encoder_, text_encoder_2_}) {
    if (!model) continue;
    for (const auto& p : model->parameters()) {
      // Mapped weights are read-only in use (pipeline/weights.cpp): the file's bytes are theirs.
      if (!p.is_contiguous()) continue;
      if (SafetensorsMap::release_resident_pages(p.data_ptr(), p.nbytes())) released += p.nbytes();
    }
  }
  return released;
}

std::vector<LoraTarget> PromptEncoder::lora_targets() const {
  std::vector<LoraTarget> targets = {{"text_encoder", text_encoder_.ptr()}};
  if (text_encoder_2_) targets.push_back({"text_encoder_2", text_encoder_2_.ptr()});
  return targets;
}

int64_t PromptEncoder::pooled_dim() const {
  return text_encoder_2_ ? text_encoder_2_->config().projection_dim : 0;
}

std::vector<int64_t> PromptEncoder::ids(const std::string& prompt) const {
  return tokenizer_.encode(prompt);
}

std::vector<int64_t> PromptEncoder::ids_2(const std::string& prompt) const {
  return tokenizer_2_ ? tokenizer_2_->encode(prompt) : std::vector<int64_t>{};
}

PromptEmbedding PromptEncoder::compute(const std::string& prompt) {
  PromptEmbedding e;
  auto ids_1 = ids_tensor(tokenizer_.encode(prompt), device_);
  if (!text_encoder_2_) {
    e.embeds = text_encoder_->forward(ids_1).to(dtype_);  // [1, 77, D]
    return e;
  }
  auto first = text_encoder_->encode(ids_1);
  auto second = text_encoder_2_->encode(ids_tensor(tokenizer_2_->encode(prompt), device_));
  e.embeds = torch::cat({penultimate(first), penultimate(second)}, -1).to(dtype_);  // [1,77,D1+D2]
  e.pooled = second.text_embeds.to(dtype_);                                         // [1, P]
  return e;
}

int64_t PromptEncoder::sequence_length(const std::string& prompt, bool a1111) const {
  if (!a1111) return tokenizer_.max_length();
  std::size_t chunks = a1111_chunks(tokenizer_, prompt).size();
  if (tokenizer_2_) chunks = std::max(chunks, a1111_chunks(*tokenizer_2_, prompt).size());
  return static_cast<int64_t>(chunks) * kChunkLength;
}

PromptEmbedding PromptEncoder::compute_a1111(const std::string& prompt) {
  PromptEmbedding e;
  auto chunks_1 = a1111_chunks(tokenizer_, prompt);
  if (!text_encoder_2_) {
    auto z = apply_weights(text_encoder_->forward(chunk_ids_tensor(chunks_1, device_)), chunks_1);
    e.embeds = z.reshape({1, -1, z.size(2)}).to(dtype_);  // [1, 77 * chunks, D]
    return e;
  }
  auto chunks_2 = a1111_chunks(*tokenizer_2_, prompt);
  const std::size_t count = std::max(chunks_1.size(), chunks_2.size());
  pad_chunks(chunks_1, count, tokenizer_);
  pad_chunks(chunks_2, count, *tokenizer_2_);
  auto first = text_encoder_->encode(chunk_ids_tensor(chunks_1, device_));
  auto second = text_encoder_2_->encode(chunk_ids_tensor(chunks_2, device_));
  auto z = torch::cat({apply_weights(penultimate(first), chunks_1).to(dtype_),
                       apply_weights(penultimate(second), chunks_2).to(dtype_)},
                      -1);                                  // [chunks, 77, D1 + D2]
  e.embeds = z.reshape({1, -1, z.size(2)});                 // [1, 77 * chunks, D1 + D2]
  e.pooled = second.text_embeds.slice(0, 0, 1).to(dtype_);  // [1, P], chunk 0
  return e;
}

PromptEmbedding PromptEncoder::encode(const std::string& prompt, bool a1111) {
  const std::string key = (a1111 ? "a" : "p") + prompt;  // one cache, two key spaces
  if (auto it = index_.find(key); it != index_.end()) {
    entries_.splice(entries_.begin(), entries_, it->second);
    return it->second->second;
  }
  PromptEmbedding e = a1111 ? compute_a1111(prompt) : compute(prompt);
  if (capacity_ == 0) return e;
  entries_.emplace_front(key, e);
  index_[key] = entries_.begin();
  while (entries_.size() > capacity_) {
    index_.erase(entries_.back().first);
    entries_.pop_back();
  }
  return e;
}

PromptEmbedding PromptEncoder::zeros() {
  PromptEmbedding e = encode("");  // the shapes (cached after the first call)
  e.embeds = torch::zeros_like(e.embeds);
  if (e.pooled.defined()) e.pooled = torch::zeros_like(e.pooled);
  return e;
}

}  // namespace diffusiond
