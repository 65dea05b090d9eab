// .npy header parser (a small reader for the dict literal numpy writes) over a memory map, and
// NpyDataset.
#include "dtrain/data/npy.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <iomanip>
#include <sstream>
#include <string_view>

#include "dtrain/tensor/check.h"

namespace dtrain::data {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the .npy, CIFAR and token readers assume a little-endian host");

constexpr std::string_view kMagic = "\x93NUMPY";

struct DTypeInfo {
  std::string_view descr;
  NpyDType dtype;
  size_t bytes;
};
constexpr DTypeInfo kDTypes[] = {
    {"<f4", NpyDType::kFloat32, 4}, {"<f8", NpyDType::kFloat64, 8}, {"|u1", NpyDType::kUInt8, 1},
    {"<i4", NpyDType::kInt32, 4},   {"<i8", NpyDType::kInt64, 8},   {"<u2", NpyDType::kUInt16, 2},
    {"<u4", NpyDType::kUInt32, 4},
};
constexpr const char* kSupported = "'<f4', '<f8', '|u1', '<i4', '<i8', '<u2', '<u4'";

/// The header dict numpy writes: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }.
/// Keys and values are Python literals: quoted strings, True/False and tuples of integers.
class HeaderParser {
 public:
  HeaderParser(const std::string& path, std::string_view text) : path_(path), text_(text) {}

  void parse(std::string& descr, bool& fortran_order, Shape& shape) {
    bool have_descr = false, have_order = false, have_shape = false;
    expect('{');
    for (;;) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = parse_string();
      expect(':');
      if (key == "descr") {
        descr = parse_string();
        have_descr = true;
      } else if (key == "fortran_order") {
        fortran_order = parse_bool();
        have_order = true;
      } else if (key == "shape") {
        shape = parse_shape();
        have_shape = true;
      } else {
        fail("unknown key '" + key + "'; expected 'descr', 'fortran_order' and 'shape'");
      }
      skip_space();
      if (peek() == ',') ++pos_;
    }
    DTRAIN_CHECK(have_descr && have_order && have_shape, "npy file '", path_, "': header ",
                 quoted_text(), " lacks ",
                 !have_descr   ? "'descr'"
                 : !have_order ? "'fortran_order'"
                               : "'shape'",
                 "; expected 'descr', 'fortran_order' and 'shape'");
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    DTRAIN_THROW(ValueError, "npy file '", path_, "': malformed header at character ", pos_, ": ",
                 what, ". Header: ", quoted_text());
  }
  std::string quoted_text() const {
    std::string shown(text_.substr(0, 200));
    for (char& c : shown) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
    }
    return "\"" + shown + (text_.size() > 200 ? "...\"" : "\"");
  }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void expect(char c) {
    skip_space();
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string parse_string() {
    skip_space();
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a quoted string");
    const size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) fail("unterminated string");
    std::string s(text_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return s;
  }
  bool parse_bool() {
    skip_space();
    for (const auto& [word, value] : {std::pair{"True", true}, std::pair{"False", false}}) {
      const std::string_view w = word;
      if (text_.substr(pos_, w.size()) == w) {
        pos_ += w.size();
        return value;
      }
    }
    fail("expected True or False");
  }
  Shape parse_shape() {
    expect('(');
    Shape shape;
    for (;;) {
      skip_space();
      if (peek() == ')') break;
      if (peek() < '0' || peek() > '9') fail("expected a non-negative integer in the shape");
      int64_t dim = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (dim > (INT64_MAX - 9) / 10) fail("shape dimension too large");
        dim = dim * 10 + (text_[pos_++] - '0');
      }
      if (peek() == 'L') ++pos_;  // Python 2 longs, in files written by old numpy
      shape.push_back(dim);
      skip_space();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() != ')') {
        fail("expected ',' or ')' in the shape");
      }
    }
    ++pos_;
    return shape;
  }

  const std::string& path_;
  std::string_view text_;
  size_t pos_ = 0;
};

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <class T, class Out, class Convert>
void convert(const uint8_t* p, int64_t count, Out* out, Convert f) {
  for (int64_t i = 0; i < count; ++i) out[i] = f(load<T>(p + i * sizeof(T)));
}

}  // namespace

NpyArray read_npy(const std::string& path) {
  NpyArray a;
  a.path = path;
  a.file = std::make_shared<const MappedFile>(path, "npy file");
  const uint8_t* b = a.file->data();
  const size_t size = a.file->size();
  auto hex_prefix = [&] {
    std::ostringstream os;
    os << std::hex << std::setfill('0');
    for (size_t i = 0; i < std::min<size_t>(size, 6); ++i)
      os << (i ? " " : "") << std::setw(2) << int{b[i]};
    return os.str();
  };
  DTRAIN_CHECK(size >= 10 && std::memcmp(b, kMagic.data(), kMagic.size()) == 0, "npy file '", path,
               "': bad magic (first bytes ", size == 0 ? "none: the file is empty" : hex_prefix(),
               "); expected \\x93NUMPY. Not a .npy file (an .npz archive or a raw dump)?");
  const int major = b[6], minor = b[7];
  DTRAIN_CHECK((major == 1 || major == 2 || major == 3) && minor == 0, "npy file '", path,
               "': format version ", major, ".", minor,
               " is not supported; expected 1.0, 2.0 or 3.0");
  // 1.0 stores the header length as uint16, 2.0 and 3.0 as uint32 (3.0: the header is UTF-8).
  const size_t prefix = major == 1 ? 10 : 12;
  DTRAIN_CHECK(size >= prefix, "npy file '", path, "': truncated header: ", size,
               " bytes, a version ", major, ".0 header needs at least ", prefix);
  const size_t header_len = major == 1 ? load<uint16_t>(b + 8) : load<uint32_t>(b + 8);
  DTRAIN_CHECK(header_len <= size - prefix, "npy file '", path, "': truncated header: it says ",
               header_len, " bytes of header after the ", prefix, "-byte prefix, the file has ",
               size - prefix);
  a.data_offset = prefix + header_len;

  bool fortran_order = false;
  const std::string_view text(reinterpret_cast<const char*>(b + prefix), header_len);
  HeaderParser(path, text).parse(a.descr, fortran_order, a.shape);
  DTRAIN_CHECK(!fortran_order, "npy file '", path,
               "': fortran_order is True; only C order is supported. Save it with "
               "numpy.save(path, numpy.ascontiguousarray(a))");
  const DTypeInfo* info = nullptr;
  for (const DTypeInfo& t : kDTypes) {
    if (t.descr == a.descr) info = &t;
  }
  const bool big_endian = !a.descr.empty() && a.descr[0] == '>';
  DTRAIN_CHECK(info != nullptr, "npy file '", path, "': dtype '", a.descr, "' is not supported",
               big_endian ? " (big-endian)" : "", "; expected one of ", kSupported,
               big_endian ? ". Convert it with a.astype(a.dtype.newbyteorder('<'))" : "");
  a.dtype = info->dtype;
  a.item_bytes = info->bytes;

  uint64_t expected = a.item_bytes;
  std::ostringstream dims;
  bool overflow = false;
  for (size_t d = 0; d < a.shape.size(); ++d) {
    dims << (d ? " x " : "") << a.shape[d];
    overflow =
        overflow || __builtin_mul_overflow(expected, static_cast<uint64_t>(a.shape[d]), &expected);
  }
  const uint64_t actual = size - a.data_offset;
  DTRAIN_CHECK(!overflow && expected <= actual, "npy file '", path, "': truncated: shape ",
               shape_str(a.shape), " of '", a.descr, "' needs ",
               overflow ? std::string("more than 2^64") : std::to_string(expected),
               " bytes of data, the file has ", actual, " after the ", a.data_offset,
               "-byte header");
  DTRAIN_CHECK(expected == actual, "npy file '", path, "': trailing bytes: shape ",
               shape_str(a.shape), " of '", a.descr, "' needs ", expected,
               " bytes of data, the file has ", actual, " after the ", a.data_offset,
               "-byte header (", actual - expected, " extra)");
  return a;
}

void NpyArray::read_float(int64_t first, int64_t count, float scale, float* out) const {
  const uint8_t* p = data() + static_cast<size_t>(first) * item_bytes;
  auto f = [scale](auto v) { return static_cast<float>(v) * scale; };
  switch (dtype) {
    case NpyDType::kFloat32:
      return convert<float>(p, count, out, f);
    case NpyDType::kFloat64:
      return convert<double>(p, count, out, f);
    case NpyDType::kUInt8:
      return convert<uint8_t>(p, count, out, f);
    case NpyDType::kInt32:
      return convert<int32_t>(p, count, out, f);
    case NpyDType::kInt64:
      return convert<int64_t>(p, count, out, f);
    case NpyDType::kUInt16:
      return convert<uint16_t>(p, count, out, f);
    case NpyDType::kUInt32:
      return convert<uint32_t>(p, count, out, f);
  }
}

void NpyArray::read_int64(int64_t first, int64_t count, int64_t* out) const {
  DTRAIN_CHECK(is_integer(), "npy file '", path, "': dtype '", descr,
               "' is floating point; expected an integer type ('|u1', '<i4', '<i8', '<u2', '<u4')");
  const uint8_t* p = data() + static_cast<size_t>(first) * item_bytes;
  auto f = [](auto v) { return static_cast<int64_t>(v); };
  switch (dtype) {
    case NpyDType::kUInt8:
      return convert<uint8_t>(p, count, out, f);
    case NpyDType::kInt32:
      return convert<int32_t>(p, count, out, f);
    case NpyDType::kInt64:
      return convert<int64_t>(p, count, out, f);
    case NpyDType::kUInt16:
      return convert<uint16_t>(p, count, out, f);
    case NpyDType::kUInt32:
      return convert<uint32_t>(p, count, out, f);
    case NpyDType::kFloat32:
    case NpyDType::kFloat64:
      break;
  }
}

NpyDataset::NpyDataset(std::string x_path, std::string y_path, int64_t num_classes, float scale)
    : x_(read_npy(x_path)), y_path_(std::move(y_path)), classes_(num_classes), scale_(scale) {
  DTRAIN_CHECK(num_classes >= 0, "NpyDataset('", x_path, "'): num_classes is ", num_classes,
               "; expected >= 1, or 0 for the largest label + 1");
  DTRAIN_CHECK(std::isfinite(scale), "NpyDataset('", x_path, "'): scale is ", scale,
               "; expected a finite number such as 1/255");
  DTRAIN_CHECK(x_.shape.size() >= 2 && x_.shape[0] >= 1, "npy file '", x_path, "': shape ",
               shape_str(x_.shape),
               "; expected examples [N, ...] with N >= 1 and at least one "
               "more dimension (e.g. [N, 784] or [N, 1, 28, 28])");
  n_ = x_.shape[0];
  example_shape_.assign(x_.shape.begin() + 1, x_.shape.end());
  example_numel_ = shape_numel(example_shape_);
  DTRAIN_CHECK(example_numel_ > 0, "npy file '", x_path, "': shape ", shape_str(x_.shape),
               " has an empty example; every dimension after the first must be positive");

  const NpyArray y = read_npy(y_path_);
  DTRAIN_CHECK(y.is_integer(), "npy label file '", y_path_, "': dtype '", y.descr,
               "'; labels must be class indices of an integer type ('|u1', '<i4', '<i8', '<u2', "
               "'<u4'). Convert them with y.astype('<i8')");
  const bool column = y.shape.size() == 2 && y.shape[1] == 1;
  DTRAIN_CHECK(y.shape.size() == 1 || column, "npy label file '", y_path_, "': shape ",
               shape_str(y.shape), "; expected [N] (or [N, 1]), one class index per example");
  DTRAIN_CHECK(y.shape[0] == n_, "npy label file '", y_path_, "' has ", y.shape[0], " labels but '",
               x_path, "' has ", n_, " examples; expected one label per example");
  labels_.resize(static_cast<size_t>(n_));
  y.read_int64(0, n_, labels_.data());
  int64_t largest = 0;
  for (int64_t i = 0; i < n_; ++i) {
    const int64_t label = labels_[i];
    DTRAIN_CHECK(label >= 0, "npy label file '", y_path_, "': label ", label, " at index ", i,
                 " is negative; labels are class indices >= 0");
    DTRAIN_CHECK(num_classes == 0 || label < num_classes, "npy label file '", y_path_, "': label ",
                 label, " at index ", i, " is out of range; expected 0..", num_classes - 1,
                 " (num_classes = ", num_classes, ")");
    largest = std::max(largest, label);
  }
  if (classes_ == 0) classes_ = largest + 1;
}

void NpyDataset::fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const {
  detail::check_batch(*this, indices, x, y);
  float* xs = x.data<float>();
  int64_t* ys = y.data<int64_t>();
  for (size_t b = 0; b < indices.size(); ++b) {
    const int64_t i = indices[b];
    x_.read_float(i * example_numel_, example_numel_, scale_, xs + b * example_numel_);
    ys[b] = labels_[i];
  }
}

std::string NpyDataset::describe() const {
  return dtrain::detail::concat("NpyDataset('", x_.path, "' '", x_.descr, "' ", n_, " x ",
                                shape_str(example_shape_), ", labels '", y_path_, "', ", classes_,
                                " classes, scale ", scale_, ")");
}

}  // namespace dtrain::data
