// Fuzz target: the CLIP tokenizer (pipeline/text) with the tiny model's vocabulary and merges
// (tests/fixtures/tiny-sd1/tokenizer), on arbitrary bytes as the prompt text (ill-formed UTF-8
// included: the tokenizer decodes it with replacement characters).
// Checks: encode() is bos + token_ids() (cut to max_length() - 2) + eos, padded to exactly
// max_length() ids; every id is a vocabulary or added-token id. TokenizerError is an acceptable
// answer; any other exception or a crash is a bug (abort).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "pipeline/text/clip_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using diffusiond::ClipTokenizer;
  static const ClipTokenizer tokenizer =
      ClipTokenizer::load(DIFFUSIOND_FIXTURES "/tiny-sd1/tokenizer");
  if (size > 2048) return 0;  // prompts are at most 2000 characters; keep each run fast
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<int64_t> ids, plain;
  try {
    ids = tokenizer.encode(text);
    plain = tokenizer.token_ids(text);
    (void)tokenizer.normalize(text);
  } catch (const diffusiond::TokenizerError&) {
    return 0;
  }
  const auto n = static_cast<std::size_t>(tokenizer.max_length());
  std::vector<int64_t> expected{tokenizer.bos_id()};
  expected.insert(expected.end(), plain.begin(),
                  plain.begin() + static_cast<std::ptrdiff_t>(std::min(plain.size(), n - 2)));
  expected.push_back(tokenizer.eos_id());
  expected.resize(n, tokenizer.pad_id());
  if (ids != expected) std::abort();
  for (int64_t id : plain) {
    if (id < 0 || id > static_cast<int64_t>(tokenizer.vocab_size()) + 1000) std::abort();
  }
  return 0;
}
