// Error types and the DTRAIN_CHECK macro. Library code throws these; only the executable catches.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace dtrain {

/// Base of every dtrain error; what() starts with the message and ends with " (file:line)".
class Error : public std::runtime_error {
 public:
  Error(const std::string& msg, const char* file, int line)
      : std::runtime_error(msg + " (" + file + ":" + std::to_string(line) + ")"), message_(msg) {}
  /// The message without the source location.
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

class ValueError : public Error {
  using Error::Error;
};
class UnsupportedError : public Error {
  using Error::Error;
};
class TimeoutError : public Error {
  using Error::Error;
};
/// A failure inside a communication library (MPI, NCCL): the message carries its decoded error.
class DistError : public Error {
  using Error::Error;
};

namespace detail {
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}
}  // namespace detail

}  // namespace dtrain

#define DTRAIN_THROW(ErrorType, ...) \
  throw ErrorType(::dtrain::detail::concat(__VA_ARGS__), __FILE__, __LINE__)

/// Throws ValueError with the streamed parts when cond is false.
#define DTRAIN_CHECK(cond, ...)                                   \
  do {                                                            \
    if (!(cond)) DTRAIN_THROW(::dtrain::ValueError, __VA_ARGS__); \
  } while (0)
