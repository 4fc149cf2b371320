// A1111's long-prompt chunking: a parsed prompt (prompt_attention.h) as chunks of 75 tokens,
// each framed by bos/eos to 77 ids, with one weight per id.
// Ref: stable-diffusion-webui modules/sd_hijack_clip.py
// FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line / empty_chunk / process_tokens
// (textual-inversion embeddings are not supported); written from its behaviour, not copied.
//
// In order, per piece of the parse: a BREAK ends the current chunk (padded); otherwise each
// token is appended with the piece's weight, where
//  - a comma token remembers its position in the chunk;
//  - a full chunk (75 tokens) whose last comma lies at most `comma_backtrack` (A1111's
//    comma_padding_backtrack, 20) tokens back is cut after that comma: the tokens after it move
//    to the next chunk;
//  - a full chunk is closed before the next token goes in.
// The last chunk is closed if it holds tokens or no chunk exists yet (so "" is one chunk).
// Closing: pad to 75 with eos (weight 1), frame bos ... eos (weight 1), then every id after the
// first eos becomes the pad id where the two differ (A1111's SD2/OpenCLIP rule: the diffusers
// SD2 tokenizer and SDXL's tokenizer_2 pad with "!", id 0, as OpenCLIP does; SD 1.x pads with
// eos, and there nothing is replaced).
// Thread-safety: pure functions (the tokenizer is thread-safe); any thread.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "pipeline/text/clip_tokenizer.h"

namespace diffusiond {

inline constexpr int kChunkTokens = 75;     // A1111's chunk_length
inline constexpr int kChunkLength = 77;     // ids per chunk: bos + 75 + eos
inline constexpr int kCommaBacktrack = 20;  // A1111's comma_padding_backtrack default

struct PromptChunk {
  std::vector<int64_t> ids;    // kChunkLength
  std::vector<float> weights;  // kChunkLength; 1 at bos, eos and padding
};

struct ChunkIds {
  int64_t bos = 0, eos = 0, pad = 0;
  int64_t comma = -1;  // ",</w>"; -1: none (no backtracking)
};

// One piece of a parse, tokenised: its ids (no bos/eos) and weight, or a BREAK.
struct WeightedTokens {
  std::vector<int64_t> ids;
  float weight = 1.0f;
  bool is_break = false;
};

std::vector<PromptChunk> build_chunks(const std::vector<WeightedTokens>& pieces,
                                      const ChunkIds& ids, int comma_backtrack = kCommaBacktrack);

// parse_prompt_attention + tokenizer.token_ids() per piece + build_chunks, with the
// tokenizer's bos/eos/pad and its ",</w>" id.
std::vector<PromptChunk> a1111_chunks(const ClipTokenizer& tokenizer, std::string_view prompt,
                                      int comma_backtrack = kCommaBacktrack);

// The empty chunk (bos, eos, pad...; weights 1): what "" gives, and what pads a shorter prompt.
PromptChunk empty_chunk(const ChunkIds& ids);

ChunkIds chunk_ids(const ClipTokenizer& tokenizer);

}  // namespace diffusiond
