// Config loader: YAML text, then (after a NUL byte) one "section.key=value" override per line.
// A config that loads must print (to_yaml) as YAML that loads back to the same config.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dtrain/train/config.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dtrain;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string yaml(input.substr(0, nul));
  std::vector<std::string> overrides;
  if (nul != std::string_view::npos) {
    std::string_view rest = input.substr(nul + 1);
    while (!rest.empty()) {
      const size_t eol = rest.find('\n');
      overrides.emplace_back(rest.substr(0, eol));
      rest = eol == std::string_view::npos ? std::string_view() : rest.substr(eol + 1);
    }
  }
  fuzz::only_dtrain_errors([&] {
    const train::Config config = train::parse_config(yaml, "fuzz.yaml", overrides);
    const std::string printed = config.to_yaml();
    std::string reprinted;
    try {
      reprinted = train::parse_config(printed, "printed.yaml").to_yaml();
    } catch (const Error& e) {
      std::fprintf(stderr, "fuzz: the printed config does not load: %s\n--- printed\n%s\n",
                   e.what(), printed.c_str());
      std::abort();
    }
    fuzz::require(reprinted == printed, "to_yaml of a loaded config loads back to the same config");
  });
  return 0;
}
