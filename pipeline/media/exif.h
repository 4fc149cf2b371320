// EXIF carrying one UserComment: how AUTOMATIC1111 stores the generation parameters in JPEG and
// WebP files (piexif.dump of {"Exif": {UserComment: UserComment.dump(text, "unicode")}}: a
// big-endian TIFF, IFD0 -> Exif IFD -> UserComment = "UNICODE\0" + UTF-16BE text).
// Ref: EXIF 2.32 (CIPA DC-008) 4.6.5 UserComment; piexif's helper.UserComment. Torch-free.
// Thread-safety: pure functions.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace diffusiond {

class ExifError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The TIFF bytes (starting "MM\0*"), without the JPEG APP1 "Exif\0\0" prefix. `utf8_text` must be
// valid UTF-8 (throws ExifError otherwise).
std::string exif_with_user_comment(std::string_view utf8_text);

// The UserComment of an EXIF blob (with or without the "Exif\0\0" prefix, either byte order) as
// UTF-8: "UNICODE" comments are UTF-16, big-endian as piexif writes them unless a byte-order mark
// says otherwise; "ASCII" and undefined-charset comments are taken as they are. nullopt when there
// is none; throws ExifError when the blob is malformed.
std::optional<std::string> exif_user_comment(std::string_view exif);

}  // namespace diffusiond
