#include "pipeline/media/exif.h"

#include <array>
#include <cstdint>
#include <vector>

namespace diffusiond {
namespace {

constexpr std::uint16_t kExifIfdPointer = 0x8769;
constexpr std::uint16_t kUserComment = 0x9286;
constexpr std::uint16_t kTypeLong = 4;
constexpr std::uint16_t kTypeUndefined = 7;
constexpr std::string_view kUnicodePrefix{"UNICODE\0", 8};

void put16(std::string& out, std::uint32_t v) {
  out += static_cast<char>((v >> 8) & 0xff);
  out += static_cast<char>(v & 0xff);
}
void put32(std::string& out, std::uint32_t v) {
  put16(out, v >> 16);
  put16(out, v & 0xffff);
}

// UTF-8 -> code points; throws ExifError on invalid input.
std::vector<char32_t> decode_utf8(std::string_view s) {
  std::vector<char32_t> cps;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) throw ExifError("UserComment text is not valid UTF-8");
    char32_t cp = len == 1 ? c : c & (0x7f >> len);
    for (int j = 1; j < len; ++j) {
      const auto d = static_cast<unsigned char>(s[i + j]);
      if ((d >> 6) != 2) throw ExifError("UserComment text is not valid UTF-8");
      cp = (cp << 6) | (d & 0x3f);
    }
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      throw ExifError("UserComment text is not valid UTF-8");
    cps.push_back(cp);
    i += static_cast<std::size_t>(len);
  }
  return cps;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

struct Tiff {
  std::string_view b;
  bool big = true;
  std::uint32_t u16(std::size_t at) const {
    if (at + 2 > b.size()) throw ExifError("EXIF: truncated at offset " + std::to_string(at));
    const auto x = static_cast<unsigned char>(b[at]), y = static_cast<unsigned char>(b[at + 1]);
    return big ? (x << 8 | y) : (y << 8 | x);
  }
  std::uint32_t u32(std::size_t at) const {
    const std::uint32_t hi = u16(at), lo = u16(at + 2);
    return big ? (hi << 16 | lo) : (lo << 16 | hi);
  }
  // The entry of `tag` in the IFD at `ifd`: (type, count, value-or-offset field position).
  std::optional<std::array<std::uint32_t, 3>> find(std::uint32_t ifd, std::uint16_t tag) const {
    const std::uint32_t n = u16(ifd);
    if (n > 1000) throw ExifError("EXIF: implausible IFD entry count");
    for (std::uint32_t i = 0; i < n; ++i) {
      const std::size_t e = ifd + 2 + 12 * i;
      if (u16(e) == tag)
        return std::array<std::uint32_t, 3>{u16(e + 2), u32(e + 4),
                                            static_cast<std::uint32_t>(e + 8)};
    }
    return std::nullopt;
  }
};

}  // namespace

std::string exif_with_user_comment(std::string_view utf8_text) {
  std::string comment(kUnicodePrefix);
  for (char32_t cp : decode_utf8(utf8_text)) {
    if (cp >= 0x10000) {
      const char32_t v = cp - 0x10000;
      put16(comment, 0xd800 + (v >> 10));
      put16(comment, 0xdc00 + (v & 0x3ff));
    } else {
      put16(comment, cp);
    }
  }
  // Header (8) + IFD0 with one entry (2 + 12 + 4) + Exif IFD with one entry (2 + 12 + 4) + data.
  constexpr std::uint32_t ifd0 = 8, exif_ifd = ifd0 + 18, data = exif_ifd + 18;
  std::string out("MM\0*", 4);
  put32(out, ifd0);
  put16(out, 1);
  put16(out, kExifIfdPointer);
  put16(out, kTypeLong);
  put32(out, 1);
  put32(out, exif_ifd);
  put32(out, 0);  // no next IFD
  put16(out, 1);
  put16(out, kUserComment);
  put16(out, kTypeUndefined);
  put32(out, static_cast<std::uint32_t>(comment.size()));
  put32(out, data);
  put32(out, 0);
  return out + comment;
}

std::optional<std::string> exif_user_comment(std::string_view exif) {
  if (exif.substr(0, 6) == std::string_view("Exif\0\0", 6)) exif.remove_prefix(6);
  Tiff t{exif};
  if (exif.substr(0, 4) == std::string_view("II*\0", 4)) {
    t.big = false;
  } else if (exif.substr(0, 4) != std::string_view("MM\0*", 4)) {
    throw ExifError("EXIF: not a TIFF header");
  }
  const auto pointer = t.find(t.u32(4), kExifIfdPointer);
  if (!pointer) return std::nullopt;
  const auto entry = t.find(t.u32((*pointer)[2]), kUserComment);
  if (!entry) return std::nullopt;
  const std::uint32_t count = (*entry)[1];
  const std::uint32_t at = count <= 4 ? (*entry)[2] : t.u32((*entry)[2]);
  if (count < 8 || at > exif.size() || count > exif.size() - at)
    throw ExifError("EXIF: UserComment out of bounds");
  const std::string_view raw = exif.substr(at, count);
  const std::string_view body = raw.substr(8);
  if (raw.substr(0, 8) != kUnicodePrefix) {  // ASCII or undefined: the bytes as they are
    std::string text(body);
    while (!text.empty() && text.back() == '\0') text.pop_back();
    return text;
  }
  // UTF-16: piexif writes big-endian; a BOM, if any, decides.
  bool big = true;
  std::size_t i = 0;
  if (body.size() >= 2 && static_cast<unsigned char>(body[0]) == 0xff &&
      static_cast<unsigned char>(body[1]) == 0xfe) {
    big = false;
    i = 2;
  } else if (body.size() >= 2 && static_cast<unsigned char>(body[0]) == 0xfe &&
             static_cast<unsigned char>(body[1]) == 0xff) {
    i = 2;
  }
  auto unit = [&](std::size_t k) {
    const auto x = static_cast<unsigned char>(body[k]), y = static_cast<unsigned char>(body[k + 1]);
    return static_cast<char32_t>(big ? (x << 8 | y) : (y << 8 | x));
  };
  std::string text;
  for (; i + 1 < body.size(); i += 2) {
    char32_t u = unit(i);
    if (u >= 0xd800 && u < 0xdc00 && i + 3 < body.size()) {
      const char32_t lo = unit(i + 2);
      if (lo >= 0xdc00 && lo < 0xe000) {
        u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
        i += 2;
      }
    }
    append_utf8(text, u);
  }
  while (!text.empty() && text.back() == '\0') text.pop_back();
  return text;
}

}  // namespace diffusiond
