// printable(): text from files (tensor names, keys) made safe to print in error messages.
#pragma once

#include <string>
#include <string_view>

namespace dtrain {

/// `text` for an error message: backslashes and control characters (C0, DEL, and C1 as UTF-8)
/// escaped as \\, \n, \t, \r, \x1b, \u009b, so a name read from a file cannot move the cursor or
/// recolour the terminal the message is printed on. Other bytes, UTF-8 included, are kept.
inline std::string printable(std::string_view text) {
  constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    const unsigned next = i + 1 < text.size() ? static_cast<unsigned char>(text[i + 1]) : 0u;
    if (c == 0xC2 && next >= 0x80 && next <= 0x9F) {  // U+0080 .. U+009F
      out += "\\u00";
      out += kHex[next >> 4];
      out += kHex[next & 15];
      ++i;
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7F) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

}  // namespace dtrain
