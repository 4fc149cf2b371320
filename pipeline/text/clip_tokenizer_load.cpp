// ClipTokenizer::load: the files of a tokenizer/ folder, read the way transformers'
// CLIPTokenizer.from_pretrained reads them. Ref: PreTrainedTokenizerBase._from_pretrained and
// PreTrainedTokenizer.__init__ / _add_tokens (transformers v4.38.2), CLIPTokenizer.__init__.
#include <algorithm>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>

#include "pipeline/media/config_util.h"
#include "pipeline/text/clip_tokenizer.h"
#include "pipeline/text/unicode_text.h"

namespace diffusiond {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// CLIPTokenizer keeps merges.txt lines [1, 49152 - 256 - 2 + 1): the first line is the header.
constexpr size_t kMaxMerges = 49152 - 256 - 2;
constexpr int kLargestMaxLength = 1 << 20;

// The special-token attributes of a tokenizer, in transformers' SPECIAL_TOKENS_ATTRIBUTES order.
constexpr const char* kSpecialTokenKeys[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                             "pad_token", "cls_token", "mask_token"};

struct SpecialTokens {
  // Index = position in kSpecialTokenKeys; nullopt = not set (absent default or JSON null).
  std::optional<std::string> named[std::size(kSpecialTokenKeys)] = {
      "<|startoftext|>", "<|endoftext|>", "<|endoftext|>", std::nullopt,
      "<|endoftext|>",   std::nullopt,    std::nullopt};  // CLIPTokenizer.__init__ defaults
  std::vector<std::string> additional;
};

// A token written as a string, or as an AddedToken object {"content": ..., ...}; null = unset.
std::optional<std::string> token_text(const json& value, const std::string& key,
                                      const fs::path& file) {
  if (value.is_null()) return std::nullopt;
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object()) {
    auto it = value.find("content");
    if (it != value.end() && it->is_string()) return it->get<std::string>();
  }
  throw TokenizerError(file.string() + ": '" + key +
                       "' must be a string or an object with a string 'content'");
}

void apply_special_tokens(const json& config, const fs::path& file, SpecialTokens& tokens) {
  for (size_t i = 0; i < std::size(kSpecialTokenKeys); ++i) {
    if (auto it = config.find(kSpecialTokenKeys[i]); it != config.end()) {
      tokens.named[i] = token_text(*it, kSpecialTokenKeys[i], file);
    }
  }
  if (auto it = config.find("additional_special_tokens"); it != config.end() && !it->is_null()) {
    if (!it->is_array()) {
      throw TokenizerError(file.string() + ": 'additional_special_tokens' must be a list");
    }
    for (const auto& entry : *it) {
      auto text = token_text(entry, "additional_special_tokens", file);
      if (text && std::find(tokens.additional.begin(), tokens.additional.end(), *text) ==
                      tokens.additional.end()) {
        tokens.additional.push_back(*text);
      }
    }
  }
}

std::unordered_map<std::string, int64_t> read_vocab(const fs::path& file) {
  const json vocab = read_json_file(file);
  if (!vocab.is_object()) throw TokenizerError(file.string() + ": expected a JSON object");
  std::unordered_map<std::string, int64_t> ids;
  ids.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer()) {
      throw TokenizerError(file.string() + ": the id of '" + token + "' is not an integer");
    }
    ids.emplace(token, id.get<int64_t>());
  }
  if (ids.empty()) throw TokenizerError(file.string() + ": the vocabulary is empty");
  return ids;
}

bool is_ascii_space(char c) {
  return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f');
}

std::vector<std::string> split_on_space(std::string_view line) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_ascii_space(line[i])) ++i;
    const size_t start = i;
    while (i < line.size() && !is_ascii_space(line[i])) ++i;
    if (i > start) parts.emplace_back(line.substr(start, i - start));
  }
  return parts;
}

std::unordered_map<std::string, int> read_merges(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw TokenizerError(file.string() + ": cannot open");
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string_view text = buffer.view();
  while (!text.empty() && is_ascii_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_ascii_space(text.back())) text.remove_suffix(1);

  std::unordered_map<std::string, int> ranks;
  size_t pos = text.find('\n');  // the first line ("#version: ...") is skipped unread
  for (size_t rank = 0; pos != std::string_view::npos && rank < kMaxMerges; ++rank) {
    const size_t begin = pos + 1;
    pos = text.find('\n', begin);
    const auto line = text.substr(begin, pos == std::string_view::npos ? pos : pos - begin);
    const auto parts = split_on_space(line);
    if (parts.size() == 2) ranks[parts[0] + " " + parts[1]] = static_cast<int>(rank);
  }
  if (ranks.empty()) throw TokenizerError(file.string() + ": no merges found");
  return ranks;
}

// bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the others for 256 + n.
std::u32string make_byte_encoder() {
  std::u32string table(256, 0);
  char32_t next = 256;
  for (char32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    table[b] = printable ? b : next++;
  }
  return table;
}

int read_max_length(const json& config, const fs::path& file) {
  const double value = require_key<double>(config, "model_max_length", file.string());
  if (!(value >= 2 && value <= kLargestMaxLength) || value != static_cast<int>(value)) {
    throw TokenizerError(file.string() + ": 'model_max_length' must be an integer in [2, " +
                         std::to_string(kLargestMaxLength) + "]");
  }
  return static_cast<int>(value);
}

}  // namespace

ClipTokenizer ClipTokenizer::load(const fs::path& dir) {
  if (!fs::is_directory(dir)) {
    throw TokenizerError("tokenizer folder " + dir.string() + " does not exist");
  }
  ClipTokenizer tok;
  tok.vocab_ = read_vocab(dir / "vocab.json");
  tok.merge_ranks_ = read_merges(dir / "merges.txt");
  tok.byte_encoder_ = make_byte_encoder();

  const fs::path config_file = dir / "tokenizer_config.json";
  const json config = read_json_file(config_file);
  if (!config.is_object()) throw TokenizerError(config_file.string() + ": expected a JSON object");
  tok.max_length_ = read_max_length(config, config_file);
  // CLIPTokenizer lower-cases whatever do_lower_case says; the key is only type-checked.
  (void)key_or<bool>(config, "do_lower_case", true, config_file.string());

  SpecialTokens specials;
  apply_special_tokens(config, config_file, specials);

  // Added tokens that come with ids: tokenizer_config.json's added_tokens_decoder, or else
  // (legacy layout) added_tokens.json; only the legacy layout reads special_tokens_map.json.
  std::vector<std::pair<std::string, int64_t>> declared;
  if (auto it = config.find("added_tokens_decoder"); it != config.end() && !it->is_null()) {
    if (!it->is_object()) {
      throw TokenizerError(config_file.string() + ": 'added_tokens_decoder' must be an object");
    }
    for (const auto& [id_text, token] : it->items()) {
      int64_t id = 0;
      try {
        id = std::stoll(id_text);
      } catch (const std::exception&) {
        throw TokenizerError(config_file.string() + ": added_tokens_decoder key '" + id_text +
                             "' is not an id");
      }
      auto text = token_text(token, "added_tokens_decoder", config_file);
      if (text) declared.emplace_back(*text, id);
    }
  } else {
    const fs::path map_file = dir / "special_tokens_map.json";
    if (fs::exists(map_file)) {
      const json map = read_json_file(map_file);
      if (!map.is_object()) throw TokenizerError(map_file.string() + ": expected a JSON object");
      apply_special_tokens(map, map_file, specials);
    }
    const fs::path added_file = dir / "added_tokens.json";
    if (fs::exists(added_file)) {
      const json added = read_json_file(added_file);
      if (!added.is_object()) {
        throw TokenizerError(added_file.string() + ": expected a JSON object");
      }
      for (const auto& [text, id] : added.items()) {
        if (!id.is_number_integer()) {
          throw TokenizerError(added_file.string() + ": the id of '" + text +
                               "' is not an integer");
        }
        declared.emplace_back(text, id.get<int64_t>());
      }
    }
  }

  // _add_tokens(special tokens): a token already in the vocabulary keeps its id, an unknown one
  // gets the next free id after vocabulary and added tokens.
  for (const auto& [text, id] : declared) {
    if (!text.empty()) tok.added_token_ids_.emplace(text, id);
  }
  std::vector<std::string> special_texts;
  for (const auto& named : specials.named) {
    if (named) special_texts.push_back(*named);
  }
  special_texts.insert(special_texts.end(), specials.additional.begin(), specials.additional.end());
  for (const auto& text : special_texts) {
    if (text.empty() || tok.added_token_ids_.count(text)) continue;
    auto in_vocab = tok.vocab_.find(text);
    int64_t id = 0;
    if (in_vocab != tok.vocab_.end()) {
      id = in_vocab->second;
    } else {
      size_t known = tok.vocab_.size();
      for (const auto& [added, added_id] : tok.added_token_ids_) known += !tok.vocab_.count(added);
      id = static_cast<int64_t>(known);
    }
    tok.added_token_ids_.emplace(text, id);
  }
  for (const auto& [text, id] : tok.added_token_ids_) {
    tok.added_tokens_.emplace_back(text::decode_utf8(text), id);
  }

  auto required_id = [&](size_t key_index, std::string& token_out) {
    const auto& named = specials.named[key_index];
    if (!named || named->empty()) {
      throw TokenizerError(config_file.string() + ": '" + kSpecialTokenKeys[key_index] +
                           "' is not set");
    }
    token_out = *named;
    return tok.added_token_ids_.at(*named);
  };
  tok.bos_id_ = required_id(0, tok.bos_token_);
  tok.eos_id_ = required_id(1, tok.eos_token_);
  tok.pad_id_ = required_id(4, tok.pad_token_);
  if (specials.named[2] && !specials.named[2]->empty()) {
    tok.unk_token_ = *specials.named[2];
    tok.unk_id_ = tok.added_token_ids_.at(tok.unk_token_);
  }
  return tok;
}

}  // namespace diffusiond
