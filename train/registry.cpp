// The model and dataset registries, their built-in entries, and typed access to option values.
#include "dtrain/train/registry.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iomanip>
#include <memory>
#include <mutex>
#include <sstream>

#include "dtrain/data/cifar.h"
#include "dtrain/data/npy.h"
#include "dtrain/data/token_stream.h"
#include "dtrain/train/config.h"
#include "dtrain/train/factories.h"
#include "dtrain/train/models.h"
#include "dtrain/train/sequential.h"

namespace dtrain::train {
namespace {

std::string number_text(double v) {
  std::ostringstream os;
  os << std::setprecision(15) << v;
  std::string s = os.str();
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string int_list_text(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

template <class Entry>
struct Table {
  std::mutex mu;
  std::vector<std::unique_ptr<Entry>> entries;
};

Table<ModelEntry>& models() {
  static Table<ModelEntry>* table = [] {
    auto* t = new Table<ModelEntry>();
    // Built-in models read the schema's model.* keys rather than keys of their own.
    const ModelFactory zoo = [](const ModelContext& c) -> nn::ModulePtr {
      return build_model(c.config, c.example_shape, c.num_classes, c.seed);
    };
    t->entries.push_back(std::make_unique<ModelEntry>(ModelEntry{
        "mlp", zoo, {}, "Flatten, hidden Linear layers (model.hidden), a Linear head."}));
    t->entries.push_back(std::make_unique<ModelEntry>(
        ModelEntry{"cnn",
                   zoo,
                   {},
                   "Two 5x5 convolutions with 2x2 max pooling (model.channels), a fully "
                   "connected layer (model.fc_units), a Linear head."}));
    t->entries.push_back(std::make_unique<ModelEntry>(ModelEntry{
        "sequential",
        [](const ModelContext& c) -> nn::ModulePtr {
          const bool tokens = c.example_dtype == DType::kInt64;
          auto model = build_sequential(c.config.layers, c.example_shape, c.num_classes, tokens,
                                        c.seed, "config");
          Shape out = c.example_shape;
          {
            NoGradGuard no_grad;  // the output shape, from the same inference the build ran
            out = infer_output_shape(c.config.layers, c.example_shape, c.num_classes, tokens,
                                     "config");
          }
          check_classifier_output(out, c.example_shape, c.num_classes, tokens, "config");
          return model;
        },
        {},
        "The layers of model.layers in order (see \"Sequential layers\")."}));
    return t;
  }();
  return *table;
}

Table<DatasetEntry>& datasets() {
  static Table<DatasetEntry>* table = [] {
    auto* t = new Table<DatasetEntry>();
    const DatasetFactory builtin = [](const DataContext& c) {
      return make_builtin_datasets(c.config, c.seed);
    };
    t->entries.push_back(std::make_unique<DatasetEntry>(
        DatasetEntry{"fashion_mnist", builtin, {}, "Fashion-MNIST IDX files under data.path."}));
    t->entries.push_back(std::make_unique<DatasetEntry>(
        DatasetEntry{"synthetic",
                     builtin,
                     {},
                     "A seeded synthetic set with a learnable target (data.synthetic_*)."}));
    for (const int variant : {10, 100}) {
      t->entries.push_back(std::make_unique<DatasetEntry>(DatasetEntry{
          "cifar" + std::to_string(variant),
          [variant](const DataContext& c) -> Datasets {
            const data::Splits s =
                data::load_cifar(c.config.path, variant, data::parse_normalize(c.config.normalize));
            return {s.train, s.test};
          },
          {},
          "CIFAR-" + std::to_string(variant) +
              " binary files (the \"binary version\") under data.path, images [3, 32, 32], "
              "normalised as data.normalize says."}));
    }
    t->entries.push_back(std::make_unique<DatasetEntry>(DatasetEntry{
        "npy",
        [](const DataContext& c) -> Datasets {
          const Options& o = c.options();
          for (const char* key : {"train_x", "train_y", "test_x", "test_y"}) {
            DTRAIN_CHECK(!o.string(key).empty(), "data.", key,
                         ": data.name npy needs the .npy files of the training and test inputs "
                         "and labels (data.train_x, data.train_y, data.test_x, data.test_y)");
          }
          const auto scale = static_cast<float>(o.real("scale"));
          auto train = std::make_shared<data::NpyDataset>(o.string("train_x"), o.string("train_y"),
                                                          o.integer("classes"), scale);
          auto test = std::make_shared<data::NpyDataset>(o.string("test_x"), o.string("test_y"),
                                                         train->num_classes(), scale);
          DTRAIN_CHECK(test->example_shape() == train->example_shape(), "data: the test inputs ",
                       o.string("test_x"), " have examples of shape ",
                       shape_str(test->example_shape()), " but the training inputs ",
                       o.string("train_x"), " have ", shape_str(train->example_shape()));
          return {train, test};
        },
        {OptionKey::string("train_x", "", "npy: training inputs [N, ...] (any numeric dtype)"),
         OptionKey::string("train_y", "", "npy: training labels [N] (integers)"),
         OptionKey::string("test_x", "", "npy: test inputs"),
         OptionKey::string("test_y", "", "npy: test labels"),
         OptionKey::real("scale", 1.0, "npy: inputs are multiplied by this (1/255 for bytes)", 0),
         OptionKey::integer("classes", 0, "npy: number of classes; 0: the largest label + 1", 0)},
        "Arrays from .npy files (memory-mapped, converted to float32 batch by batch)."}));
    t->entries.push_back(std::make_unique<DatasetEntry>(DatasetEntry{
        "text",
        [](const DataContext& c) -> Datasets {
          const Options& o = c.options();
          const data::Splits s = data::text_corpus_splits(
              c.config.path, o.integer("context"), o.real("test_fraction"), o.string("cache_dir"));
          return {s.train, s.test};
        },
        {OptionKey::integer("context", 128, "text: tokens per example (the model's context)", 1,
                            1 << 20),
         OptionKey::real("test_fraction", 0.1, "text: the end of the corpus held out for testing",
                         0.001, 0.5),
         OptionKey::string("cache_dir", "data_cache",
                           "text: where the tokenized corpus is cached (keyed by the text file's "
                           "path, size and time)")},
        "A character-level language-modelling corpus: data.path is a text file (plain or .gz), "
        "each byte a token; examples are windows of data.context tokens whose labels are the "
        "next tokens."}));
    return t;
  }();
  return *table;
}

void check_keys(const std::string& what, const std::string& name, const std::string& section,
                const std::vector<OptionKey>& keys) {
  DTRAIN_CHECK(!name.empty(), "register_", what, ": the name must not be empty");
  const std::vector<std::string> builtin = config_keys();
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string qualified = section + "." + keys[i].key;
    DTRAIN_CHECK(!keys[i].key.empty(), "register_", what, "(\"", name, "\"): key ", i,
                 " has no name");
    DTRAIN_CHECK(std::find(builtin.begin(), builtin.end(), qualified) == builtin.end(), "register_",
                 what, "(\"", name, "\"): key '", keys[i].key, "' is already ", qualified,
                 ", a built-in key; choose another name");
    for (size_t j = 0; j < i; ++j) {
      DTRAIN_CHECK(keys[j].key != keys[i].key, "register_", what, "(\"", name, "\"): key '",
                   keys[i].key, "' is declared twice");
    }
  }
}

template <class Entry>
bool add_entry(Table<Entry>& table, const char* what, const char* section, Entry entry) {
  check_keys(what, entry.name, section, entry.keys);
  DTRAIN_CHECK(entry.make != nullptr, "register_", what, "(\"", entry.name,
               "\"): the factory is empty");
  std::lock_guard lock(table.mu);
  for (const auto& e : table.entries) {
    DTRAIN_CHECK(e->name != entry.name, "register_", what, "(\"", entry.name,
                 "\"): the name is taken; choose another");
  }
  table.entries.push_back(std::make_unique<Entry>(std::move(entry)));
  return true;
}

template <class Entry>
const Entry* find_entry(Table<Entry>& table, const std::string& name) {
  std::lock_guard lock(table.mu);
  for (const auto& e : table.entries) {
    if (e->name == name) return e.get();
  }
  return nullptr;
}

template <class Entry>
std::vector<const Entry*> all_entries(Table<Entry>& table) {
  std::lock_guard lock(table.mu);
  std::vector<const Entry*> out;
  for (const auto& e : table.entries) out.push_back(e.get());
  return out;
}

}  // namespace

OptionKey OptionKey::integer(std::string key, int64_t default_value, std::string doc, int64_t lo,
                             int64_t hi) {
  OptionKey k;
  k.key = std::move(key);
  k.kind = Kind::kInt;
  k.default_value = std::to_string(default_value);
  k.lo = static_cast<double>(lo);
  k.hi = static_cast<double>(hi);
  k.doc = std::move(doc);
  return k;
}

OptionKey OptionKey::real(std::string key, double default_value, std::string doc, double lo,
                          double hi) {
  OptionKey k;
  k.key = std::move(key);
  k.kind = Kind::kFloat;
  k.default_value = number_text(default_value);
  k.lo = lo;
  k.hi = hi;
  k.doc = std::move(doc);
  return k;
}

OptionKey OptionKey::boolean(std::string key, bool default_value, std::string doc) {
  OptionKey k;
  k.key = std::move(key);
  k.kind = Kind::kBool;
  k.default_value = default_value ? "true" : "false";
  k.doc = std::move(doc);
  return k;
}

OptionKey OptionKey::string(std::string key, std::string default_value, std::string doc,
                            std::vector<std::string> choices) {
  OptionKey k;
  k.key = std::move(key);
  k.kind = Kind::kString;
  k.default_value = std::move(default_value);
  k.choices = std::move(choices);
  k.doc = std::move(doc);
  return k;
}

OptionKey OptionKey::integers(std::string key, std::vector<int64_t> default_value, std::string doc,
                              int64_t lo) {
  OptionKey k;
  k.key = std::move(key);
  k.kind = Kind::kIntList;
  k.default_value = int_list_text(default_value);
  k.lo = static_cast<double>(lo);
  k.doc = std::move(doc);
  return k;
}

std::string OptionKey::type_name() const {
  switch (kind) {
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kBool:
      return "bool";
    case Kind::kString:
      return "string";
    case Kind::kIntList:
      return "int list";
  }
  return "?";
}

std::string OptionKey::allowed() const {
  const auto bound = [&](double v) {
    return kind == Kind::kFloat ? number_text(v) : std::to_string(static_cast<int64_t>(v));
  };
  const bool has_lo = std::isfinite(lo) && lo > -9.2e18, has_hi = std::isfinite(hi) && hi < 9.2e18;
  const std::string noun = kind == Kind::kFloat     ? "number"
                           : kind == Kind::kIntList ? "list of integers"
                                                    : "integer";
  switch (kind) {
    case Kind::kBool:
      return "true | false";
    case Kind::kString: {
      if (choices.empty()) return "any non-empty string";
      std::string s;
      for (size_t i = 0; i < choices.size(); ++i) s += (i ? " | " : "") + choices[i];
      return s;
    }
    default:
      if (has_lo && has_hi) return noun + " in [" + bound(lo) + ", " + bound(hi) + "]";
      if (has_lo) return noun + " >= " + bound(lo);
      if (has_hi) return noun + " <= " + bound(hi);
      return noun;
  }
}

bool Options::contains(const std::string& key) const {
  return std::any_of(values_.begin(), values_.end(),
                     [&](const auto& kv) { return kv.first == key; });
}

void Options::set(const std::string& key, std::string value) {
  for (auto& [k, v] : values_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  values_.emplace_back(key, std::move(value));
}

const std::string& Options::text(const std::string& key) const {
  for (const auto& [k, v] : values_) {
    if (k == key) return v;
  }
  DTRAIN_THROW(ValueError, section_, ".", key, ": not a key of this ", section_,
               " entry; declare it in its registration (OptionKey::integer(\"", key,
               "\", ...) or another kind) to read it");
}

int64_t Options::integer(const std::string& key) const {
  const std::string& t = text(key);
  char* end = nullptr;
  const long long v = std::strtoll(t.c_str(), &end, 10);
  DTRAIN_CHECK(end && *end == '\0' && !t.empty(), section_, ".", key, ": '", t,
               "' is not an integer");
  return v;
}

double Options::real(const std::string& key) const {
  const std::string& t = text(key);
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  DTRAIN_CHECK(end && *end == '\0' && !t.empty(), section_, ".", key, ": '", t,
               "' is not a number");
  return v;
}

bool Options::boolean(const std::string& key) const {
  const std::string& t = text(key);
  DTRAIN_CHECK(t == "true" || t == "false", section_, ".", key, ": '", t, "' is not true or false");
  return t == "true";
}

std::string Options::string(const std::string& key) const { return text(key); }

std::vector<int64_t> Options::integers(const std::string& key) const {
  const std::string& t = text(key);
  DTRAIN_CHECK(t.size() >= 2 && t.front() == '[' && t.back() == ']', section_, ".", key, ": '", t,
               "' is not a list of integers");
  std::vector<int64_t> out;
  std::istringstream in(t.substr(1, t.size() - 2));
  std::string item;
  while (std::getline(in, item, ',')) {
    const size_t first = item.find_first_not_of(' ');
    if (first == std::string::npos) continue;
    out.push_back(std::stoll(item.substr(first)));
  }
  return out;
}

const Options& ModelContext::options() const { return config.options; }
const Options& DataContext::options() const { return config.options; }

bool register_model(std::string name, ModelFactory make, std::vector<OptionKey> keys,
                    std::string doc) {
  return add_entry(models(), "model", "model",
                   ModelEntry{std::move(name), std::move(make), std::move(keys), std::move(doc)});
}

bool register_dataset(std::string name, DatasetFactory make, std::vector<OptionKey> keys,
                      std::string doc) {
  return add_entry(datasets(), "dataset", "data",
                   DatasetEntry{std::move(name), std::move(make), std::move(keys), std::move(doc)});
}

const ModelEntry* find_model(const std::string& name) { return find_entry(models(), name); }
const DatasetEntry* find_dataset(const std::string& name) { return find_entry(datasets(), name); }
std::vector<const ModelEntry*> model_entries() { return all_entries(models()); }
std::vector<const DatasetEntry*> dataset_entries() { return all_entries(datasets()); }

}  // namespace dtrain::train
