// Ref: stable-diffusion-webui modules/sd_hijack_clip.py tokenize_line (see prompt_chunks.h).
#include "pipeline/text/prompt_chunks.h"

#include <algorithm>

#include "pipeline/text/prompt_attention.h"

namespace diffusiond {
namespace {

class ChunkBuilder {
 public:
  ChunkBuilder(const ChunkIds& ids, int comma_backtrack) : ids_(ids), backtrack_(comma_backtrack) {}

  void add(const WeightedTokens& piece) {
    if (piece.is_break) {
      close();
      return;
    }
    for (const int64_t token : piece.ids) {
      const auto size = static_cast<int>(tokens_.size());
      if (token == ids_.comma) {
        last_comma_ = size;
      } else if (backtrack_ != 0 && size == kChunkTokens && last_comma_ != -1 &&
                 size - last_comma_ <= backtrack_) {
        const auto cut = static_cast<std::ptrdiff_t>(last_comma_ + 1);
        std::vector<int64_t> moved_tokens(tokens_.begin() + cut, tokens_.end());
        std::vector<float> moved_weights(weights_.begin() + cut, weights_.end());
        tokens_.resize(static_cast<std::size_t>(cut));
        weights_.resize(static_cast<std::size_t>(cut));
        close();
        tokens_ = std::move(moved_tokens);
        weights_ = std::move(moved_weights);
      }
      if (static_cast<int>(tokens_.size()) == kChunkTokens) close();
      tokens_.push_back(token);
      weights_.push_back(piece.weight);
    }
  }

  std::vector<PromptChunk> finish() {
    if (!tokens_.empty() || chunks_.empty()) close();
    return std::move(chunks_);
  }

 private:
  void close() {
    PromptChunk chunk;
    chunk.ids.reserve(kChunkLength);
    chunk.ids.push_back(ids_.bos);
    chunk.ids.insert(chunk.ids.end(), tokens_.begin(), tokens_.end());
    chunk.ids.resize(kChunkLength - 1, ids_.eos);
    chunk.ids.push_back(ids_.eos);
    chunk.weights.reserve(kChunkLength);
    chunk.weights.push_back(1.0f);
    chunk.weights.insert(chunk.weights.end(), weights_.begin(), weights_.end());
    chunk.weights.resize(kChunkLength, 1.0f);
    // Everything after the first eos is padding (process_tokens, only where id_end != id_pad).
    if (ids_.pad != ids_.eos) {
      const auto first_eos = std::find(chunk.ids.begin(), chunk.ids.end(), ids_.eos);
      std::fill(first_eos + 1, chunk.ids.end(), ids_.pad);
    }
    chunks_.push_back(std::move(chunk));
    tokens_.clear();
    weights_.clear();
    last_comma_ = -1;
  }

  ChunkIds ids_;
  int backtrack_;
  std::vector<int64_t> tokens_;
  std::vector<float> weights_;
  int last_comma_ = -1;
  std::vector<PromptChunk> chunks_;
};

}  // namespace

std::vector<PromptChunk> build_chunks(const std::vector<WeightedTokens>& pieces,
                                      const ChunkIds& ids, int comma_backtrack) {
  ChunkBuilder builder(ids, comma_backtrack);
  for (const auto& piece : pieces) builder.add(piece);
  return builder.finish();
}

ChunkIds chunk_ids(const ClipTokenizer& tokenizer) {
  ChunkIds ids;
  ids.bos = tokenizer.bos_id();
  ids.eos = tokenizer.eos_id();
  ids.pad = tokenizer.pad_id();
  ids.comma = tokenizer.vocab_id(",</w>").value_or(-1);
  return ids;
}

std::vector<PromptChunk> a1111_chunks(const ClipTokenizer& tokenizer, std::string_view prompt,
                                      int comma_backtrack) {
  std::vector<WeightedTokens> pieces;
  for (const auto& piece : parse_prompt_attention(prompt)) {
    WeightedTokens t;
    t.weight = static_cast<float>(piece.weight);
    t.is_break = is_break(piece);
    if (!t.is_break) t.ids = tokenizer.token_ids(piece.text);
    pieces.push_back(std::move(t));
  }
  return build_chunks(pieces, chunk_ids(tokenizer), comma_backtrack);
}

PromptChunk empty_chunk(const ChunkIds& ids) {
  return build_chunks({}, ids).front();
}

}  // namespace diffusiond
