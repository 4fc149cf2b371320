// CLIP byte-level BPE tokenizer, matching Hugging Face's (slow) CLIPTokenizer with ftfy installed,
// which is what diffusers feeds to the Stable Diffusion text encoder.
// Ref: transformers CLIPTokenizer (models/clip/tokenization_clip.py) and the added-token handling
// of PreTrainedTokenizer.tokenize / PreTrainedTokenizerBase.from_pretrained (v4.38.2).
//
// encode(text), in order:
//  1. the text is cut at every literal occurrence of an added token (the special tokens bos, eos,
//     unk, pad, ... and tokenizer_config.json's added_tokens_decoder), leftmost then longest;
//     each occurrence becomes that token's id. SD2 configs make "!" the pad token, so every "!"
//     becomes id 0 there, exactly as in transformers.
//  2. each piece in between is cleaned (ftfy.fix_text, whitespace collapsed and stripped,
//     Python's str.lower()), split by CLIP's pre-tokenisation pattern, byte-encoded and BPE'd.
//  3. the ids are cut to model_max_length - 2, framed by bos/eos and padded with the pad id to
//     model_max_length (diffusers: padding="max_length", truncation=True).
// Known gaps: ftfy's mojibake repair (fix_encoding) is not done (see text/ftfy_fix_text.h);
// AddedToken.single_word is ignored (no CLIP config sets it; lstrip/rstrip have no effect since
// every piece is stripped anyway).
//
// Ownership/threads: immutable after load() except for the BPE cache, which is guarded by a
// mutex, so one instance may be shared by any number of threads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace diffusiond {

class TokenizerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ClipTokenizer {
 public:
  // Reads vocab.json, merges.txt, tokenizer_config.json and, when present, special_tokens_map.json
  // and added_tokens.json from `tokenizer_dir` (a model's tokenizer/ folder). Errors name the file.
  static ClipTokenizer load(const std::filesystem::path& tokenizer_dir);

  ClipTokenizer(ClipTokenizer&&) noexcept;
  ClipTokenizer& operator=(ClipTokenizer&&) noexcept;
  ~ClipTokenizer();

  // bos + tokens + eos, truncated and padded to max_length() ids.
  std::vector<int64_t> encode(const std::string& text) const;
  // The token ids of `text` alone: no bos/eos, no truncation, no padding.
  std::vector<int64_t> token_ids(const std::string& text) const;
  // The clean-up applied before pre-tokenisation (ftfy.fix_text, whitespace, lower case), on the
  // whole text. encode() applies it to each piece between added tokens.
  std::string normalize(const std::string& text) const;
  // The id of a vocabulary entry (e.g. ",</w>"), nullopt when the vocabulary has none.
  std::optional<int64_t> vocab_id(const std::string& symbol) const;

  int max_length() const { return max_length_; }
  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t pad_id() const { return pad_id_; }
  const std::string& pad_token() const { return pad_token_; }
  size_t vocab_size() const { return vocab_.size(); }

 private:
  struct BpeCache;
  ClipTokenizer();

  void append_piece_ids(const std::u32string& piece, std::vector<int64_t>& ids) const;
  void append_word_ids(const std::string& byte_encoded_word, std::vector<int64_t>& ids) const;
  int64_t id_of_symbol(const std::string& symbol) const;

  std::unordered_map<std::string, int64_t> vocab_;
  std::unordered_map<std::string, int> merge_ranks_;              // "first second" -> rank
  std::vector<std::pair<std::u32string, int64_t>> added_tokens_;  // content -> id
  std::unordered_map<std::string, int64_t> added_token_ids_;      // UTF-8 content -> id
  std::u32string byte_encoder_;                                   // byte -> stand-in character
  std::string bos_token_, eos_token_, unk_token_, pad_token_;
  int64_t bos_id_ = 0, eos_id_ = 0, pad_id_ = 0, unk_id_ = -1;
  int max_length_ = 0;
  std::unique_ptr<BpeCache> cache_;
};

}  // namespace diffusiond
