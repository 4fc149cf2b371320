#include "pipeline/prompt_encoder.h"

#include "pipeline/media/config_util.h"

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

}  // namespace

PromptEncoder::PromptEncoder(const ModelFolder& model, bool xl, torch::Device device,
                             torch::ScalarType dtype, std::size_t cache_capacity)
    : device_(device),
      dtype_(dtype),
      tokenizer_(ClipTokenizer::load(model.root / "tokenizer")),
      text_encoder_(load_clip_text_model(model.config_path("text_encoder"),
                                         model.weights_path("text_encoder"), device, dtype)),
      capacity_(cache_capacity) {
  text_encoder_->eval();
  if (xl) {
    tokenizer_2_.emplace(ClipTokenizer::load(model.root / "tokenizer_2"));
    text_encoder_2_ = load_clip_text_model(model.config_path("text_encoder_2"),
                                           model.weights_path("text_encoder_2"), device, dtype,
                                           /*with_projection=*/true);
    text_encoder_2_->eval();
  }
}

void PromptEncoder::clear_cache() {
  entries_.clear();
  index_.clear();
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

PromptEmbedding PromptEncoder::encode(const std::string& prompt) {
  if (auto it = index_.find(prompt); it != index_.end()) {
    entries_.splice(entries_.begin(), entries_, it->second);
    return it->second->second;
  }
  PromptEmbedding e = compute(prompt);
  if (capacity_ == 0) return e;
  entries_.emplace_front(prompt, e);
  index_[prompt] = entries_.begin();
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
