// Fuzz target: A1111's prompt syntax (pipeline/text/prompt_attention.h, prompt_chunks.h) on
// arbitrary bytes as the prompt, with the tiny model's CLIP vocabulary.
// Checks: the parse is never empty, has no two neighbours of equal weight (they are merged), and
// its texts joined are the prompt's characters without brackets and escapes (so never longer
// than the prompt read as UTF-8); every chunk is 77 ids and 77 weights framed by bos ... eos,
// and the chunks hold every token of the parse, in order. TokenizerError is an acceptable
// answer; any other exception or a crash is a bug (abort).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "pipeline/text/prompt_attention.h"
#include "pipeline/text/prompt_chunks.h"
#include "pipeline/text/unicode_text.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace diffusiond;
  static const ClipTokenizer tokenizer =
      ClipTokenizer::load(DIFFUSIOND_FIXTURES "/tiny-sd1/tokenizer");
  if (size > 2048) return 0;  // prompts are at most 2000 characters; keep each run fast
  const std::string prompt(reinterpret_cast<const char*>(data), size);
  const auto parsed = parse_prompt_attention(prompt);
  if (parsed.empty()) std::abort();
  std::size_t chars = 0;
  for (std::size_t i = 0; i < parsed.size(); ++i) {
    if (i > 0 && parsed[i - 1].weight == parsed[i].weight) std::abort();
    if (!is_break(parsed[i])) chars += text::decode_utf8(parsed[i].text).size();
  }
  if (chars > text::decode_utf8(prompt).size()) std::abort();

  std::vector<int64_t> tokens;  // every token of the parse, in order
  try {
    for (const auto& piece : parsed) {
      if (is_break(piece)) continue;
      const auto ids = tokenizer.token_ids(piece.text);
      tokens.insert(tokens.end(), ids.begin(), ids.end());
    }
    const auto chunks = a1111_chunks(tokenizer, prompt);
    if (chunks.empty()) std::abort();
    std::vector<int64_t> held;
    for (const auto& chunk : chunks) {
      if (chunk.ids.size() != kChunkLength || chunk.weights.size() != kChunkLength) std::abort();
      if (chunk.ids.front() != tokenizer.bos_id() || chunk.ids.back() != tokenizer.eos_id())
        std::abort();
      if (chunk.weights.front() != 1.0f || chunk.weights.back() != 1.0f) std::abort();
      // SD 1.x pads with eos: the tokens are the ids between bos and the trailing eos run.
      std::size_t end = kChunkLength - 1;
      while (end > 1 && chunk.ids[end - 1] == tokenizer.eos_id()) --end;
      held.insert(held.end(), chunk.ids.begin() + 1,
                  chunk.ids.begin() + static_cast<std::ptrdiff_t>(end));
    }
    // A prompt's own eos tokens at a chunk's end read as padding here: compare without them.
    auto strip = [&](std::vector<int64_t> v) {
      std::erase(v, tokenizer.eos_id());
      return v;
    };
    if (strip(held) != strip(tokens)) std::abort();
  } catch (const TokenizerError&) {
    return 0;
  }
  return 0;
}
