// The text clean-up that CLIP applies before tokenising: `ftfy.fix_text` (ftfy 6.3.1) with its
// default configuration. Ref: ftfy.fix_text / ftfy.fix_and_explain / ftfy.fixes.
//
// Implemented, in ftfy's order and repeated per line segment until the text stops changing:
// unescape_html ("auto": off from the first line segment containing '<' on), fix_c1_controls,
// fix_latin_ligatures, fix_character_width, uncurl_quotes, fix_line_breaks,
// remove_terminal_escapes, remove_control_chars, NFC. fix_surrogates has nothing to do on UTF-32
// decoded from UTF-8. NOT implemented: fix_encoding (ftfy's mojibake detector and its
// restore_byte_a0, replace_lossy_sequences and decode_inconsistent_utf8 sub-steps): text that is
// already mojibake, such as "cafÃ©", is kept as it is, where ftfy would turn it into "café".
//
// Thread-safety: free functions; the lookup tables are immutable (built once, thread-safely).
#pragma once

#include <string>
#include <string_view>

namespace diffusiond::text {

std::u32string ftfy_fix_text(std::u32string_view text);

// ftfy.fixes.unescape_html: one left-to-right pass over `&#?[0-9A-Za-z]{1,24};` references;
// named ones from the HTML5 list (plus all-caps aliases), numeric ones as html.unescape decodes
// them; anything else is left as it is.
std::u32string unescape_html(std::u32string_view text);

}  // namespace diffusiond::text
