// Models and datasets by name. `model.type` and `data.name` choose an entry here; an entry may
// declare keys of its own, which the config reads under its section with the same checks as the
// built-in keys. Built-in entries are listed in registry.cpp; users add theirs with
// DTRAIN_REGISTER_MODEL / DTRAIN_REGISTER_DATASET in a source file of their executable.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "dtrain/data/dataset.h"
#include "dtrain/nn/module.h"
#include "dtrain/tensor/check.h"

namespace dtrain::train {

/// A key that a registered model or dataset reads under `model:` or `data:`.
struct OptionKey {
  enum class Kind { kInt, kFloat, kBool, kString, kIntList };
  std::string key;
  Kind kind = Kind::kInt;
  std::string default_value;  // as the config prints it (YAML), e.g. "128", "[64, 64]", "relu"
  double lo = -std::numeric_limits<double>::infinity();  // kInt, kFloat, kIntList elements
  double hi = std::numeric_limits<double>::infinity();
  std::vector<std::string> choices;  // kString: the allowed values ({} : any non-empty string)
  std::string doc;

  static OptionKey integer(std::string key, int64_t default_value, std::string doc,
                           int64_t lo = std::numeric_limits<int64_t>::min(),
                           int64_t hi = std::numeric_limits<int64_t>::max());
  static OptionKey real(std::string key, double default_value, std::string doc,
                        double lo = -std::numeric_limits<double>::infinity(),
                        double hi = std::numeric_limits<double>::infinity());
  static OptionKey boolean(std::string key, bool default_value, std::string doc);
  static OptionKey string(std::string key, std::string default_value, std::string doc,
                          std::vector<std::string> choices = {});
  static OptionKey integers(std::string key, std::vector<int64_t> default_value, std::string doc,
                            int64_t lo = std::numeric_limits<int64_t>::min());
  /// "int", "float", "bool", "string", "int list".
  std::string type_name() const;
  /// What the value may be, for messages and docs ("integer in [1, 4096]").
  std::string allowed() const;
};

/// The values of a model's or dataset's own keys, validated and complete (defaults filled in),
/// in the order the entry declared them. Values are kept as their config text.
class Options {
 public:
  Options() = default;
  explicit Options(std::string section) : section_(std::move(section)) {}
  int64_t integer(const std::string& key) const;
  double real(const std::string& key) const;
  bool boolean(const std::string& key) const;
  std::string string(const std::string& key) const;
  std::vector<int64_t> integers(const std::string& key) const;
  bool contains(const std::string& key) const;

  void set(const std::string& key, std::string value);
  const std::vector<std::pair<std::string, std::string>>& values() const { return values_; }
  const std::string& section() const { return section_; }
  bool operator==(const Options&) const = default;

 private:
  const std::string& text(const std::string& key) const;
  std::string section_;
  std::vector<std::pair<std::string, std::string>> values_;
};

struct ModelConfig;
struct DataConfig;

/// What a model factory is given: the data's example shape and classes, the run's seed, and the
/// `model` section (its own keys in `options()`).
struct ModelContext {
  const ModelConfig& config;
  Shape example_shape;  // one example, without the batch dimension
  DType example_dtype = DType::kFloat32;
  int64_t num_classes = 0;
  uint64_t seed = 0;
  const Options& options() const;
};
using ModelFactory = std::function<nn::ModulePtr(const ModelContext&)>;

/// A run's training and evaluation splits.
struct Datasets {
  data::DatasetPtr train, test;
};
/// What a dataset factory is given: the `data` section (its own keys in `options()`) and the
/// run's seed.
struct DataContext {
  const DataConfig& config;
  int64_t seed = 0;
  const Options& options() const;
};
using DatasetFactory = std::function<Datasets(const DataContext&)>;

struct ModelEntry {
  std::string name;
  ModelFactory make;
  std::vector<OptionKey> keys;
  std::string doc;
};
struct DatasetEntry {
  std::string name;
  DatasetFactory make;
  std::vector<OptionKey> keys;
  std::string doc;
};

/// Adds an entry; a name that is taken, or a key that a built-in key of the section already uses,
/// is an error. Returns true, so that a static initialiser can call it.
bool register_model(std::string name, ModelFactory make, std::vector<OptionKey> keys = {},
                    std::string doc = "");
bool register_dataset(std::string name, DatasetFactory make, std::vector<OptionKey> keys = {},
                      std::string doc = "");

/// The entry called `name`, or nullptr.
const ModelEntry* find_model(const std::string& name);
const DatasetEntry* find_dataset(const std::string& name);
/// Every entry, built-in ones first, then in registration order.
std::vector<const ModelEntry*> model_entries();
std::vector<const DatasetEntry*> dataset_entries();

}  // namespace dtrain::train

#define DTRAIN_REGISTRY_CONCAT_(a, b) a##b
#define DTRAIN_REGISTRY_CONCAT(a, b) DTRAIN_REGISTRY_CONCAT_(a, b)
/// DTRAIN_REGISTER_MODEL("my_net", factory[, keys[, doc]]) at namespace scope in a source file of
/// the executable (a static library's unused object files are dropped by the linker, and with them
/// their registrations; call register_model from main for a model that lives in a library).
#define DTRAIN_REGISTER_MODEL(name, ...)                                                          \
  [[maybe_unused]] static const bool DTRAIN_REGISTRY_CONCAT(dtrain_registered_model_, __LINE__) = \
      ::dtrain::train::register_model(name, __VA_ARGS__)
#define DTRAIN_REGISTER_DATASET(name, ...)                   \
  [[maybe_unused]] static const bool DTRAIN_REGISTRY_CONCAT( \
      dtrain_registered_dataset_, __LINE__) = ::dtrain::train::register_dataset(name, __VA_ARGS__)
