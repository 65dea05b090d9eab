// Byte-level encodings shared by the files dtrain writes: CRC-32C (checkpoints, TensorBoard's
// TFRecord framing) and JSON string quoting (JSON-lines metrics, safetensors headers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dtrain::train {

/// CRC-32C (Castagnoli). Pass the previous result as `crc` to continue over more bytes.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
/// Masked CRC-32C as TFRecord framing uses it: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t n);

namespace detail {
/// `text` as a quoted JSON string ('"', '\\' and control characters escaped); shared by the JSON
/// writers of this folder.
std::string json_string(std::string_view text);
}  // namespace detail

}  // namespace dtrain::train
