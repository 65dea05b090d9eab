// `dtrain predict`: reads inputs (IDX images or .npy) and optional labels, checks them against the
// checkpoint's model, and writes predictions from batched forward passes.
#include "dtrain/train/predict.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>

#include "dtrain/autograd/functions.h"
#include "dtrain/autograd/grad_mode.h"
#include "dtrain/data/idx.h"
#include "dtrain/data/npy.h"
#include "dtrain/tensor/check.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/config.h"
#include "dtrain/train/factories.h"

namespace dtrain::train {
namespace {

constexpr const char* kInputKinds =
    "an IDX images file (idx3, uint8, .gz or plain, e.g. t10k-images-idx3-ubyte.gz) or a .npy "
    "array [N, ...] of float32 or uint8";
constexpr const char* kLabelKinds =
    "an IDX labels file (idx1, e.g. t10k-labels-idx1-ubyte.gz) or a .npy array [N] of integers";
constexpr const char* kCheckpointFix =
    "give a checkpoint written by dtrain train, e.g. checkpoints/ckpt-0000000100.dtck";

/// The first bytes of `path` (fewer when it is shorter; none when it cannot be read).
std::string file_prefix(const std::string& path, size_t bytes) {
  std::ifstream in(path, std::ios::binary);
  std::string s(bytes, '\0');
  in.read(s.data(), static_cast<std::streamsize>(bytes));
  s.resize(static_cast<size_t>(std::max<std::streamsize>(in.gcount(), 0)));
  return s;
}

/// Throws, naming `what` (e.g. "--input"), when `path` is missing or a directory.
void require_file(const std::string& what, const std::string& path, const std::string& fix) {
  std::error_code ec;
  DTRAIN_CHECK(!path.empty(), what, ": no file given; ", fix);
  DTRAIN_CHECK(std::filesystem::exists(path, ec), what, " '", path, "' does not exist; ", fix);
  DTRAIN_CHECK(!std::filesystem::is_directory(path, ec), what, " '", path, "' is a directory; ",
               fix);
}

/// How the training set turned bytes into model inputs: `apply` is empty when there is no such
/// rule (then `why_not` says why).
struct BytePreprocessing {
  std::string rule;  // for the note: "normalised as data.normalize=standard"
  std::string why_not;
  std::function<void(const uint8_t*, size_t, float*)> apply;
};

BytePreprocessing byte_preprocessing(const Config& c) {
  BytePreprocessing b;
  if (c.data.name == "fashion_mnist") {
    // The one implementation IdxDataset uses, so the floats match training's bit for bit.
    const data::Normalize n = data::parse_normalize(c.data.normalize);
    b.rule = "normalised as data.normalize=" + c.data.normalize;
    b.apply = [n](const uint8_t* p, size_t count, float* out) {
      data::normalize_pixels(p, count, n, out);
    };
  } else if (c.data.name == "npy") {
    // NpyDataset: float(value) * data.scale.
    const auto scale = static_cast<float>(c.data.options.real("scale"));
    b.rule = dtrain::detail::concat("scaled by data.scale=", scale);
    b.apply = [scale](const uint8_t* p, size_t count, float* out) {
      for (size_t i = 0; i < count; ++i) out[i] = static_cast<float>(p[i]) * scale;
    };
  } else {
    b.why_not = "training set (data.name " + c.data.name + ") " +
                (c.data.name == "synthetic"         ? "holds float features, not bytes"
                 : c.data.name.starts_with("cifar") ? "normalises bytes per channel"
                                                    : "has no known rule for bytes");
  }
  return b;
}

/// Examples of a file, converted to float model inputs batch by batch.
struct Inputs {
  int64_t size = 0;
  Shape example_shape;  // as the file holds one example
  std::string what;     // for the note: "uint8 IDX images, normalised as ..."
  std::function<void(int64_t first, int64_t count, float* out)> read;  // count examples
};

Inputs open_inputs(const std::string& path, const BytePreprocessing& bytes) {
  require_file("--input", path, std::string("give ") + kInputKinds);
  const auto need_bytes_rule = [&](const char* kind) {
    DTRAIN_CHECK(bytes.apply != nullptr, "--input '", path, "': ", kind,
                 " are uint8, but the checkpoint's ", bytes.why_not,
                 ", so they cannot be preprocessed as in training; give a float32 .npy of model "
                 "inputs preprocessed as the training data was");
  };
  Inputs in;
  if (file_prefix(path, 6) == "\x93NUMPY") {
    auto a = std::make_shared<const data::NpyArray>(data::read_npy(path));
    DTRAIN_CHECK(a->shape.size() >= 2 && a->shape[0] >= 1, "--input '", path, "': shape ",
                 shape_str(a->shape),
                 "; expected examples [N, ...] with N >= 1 and the model's example shape after N");
    in.size = a->shape[0];
    in.example_shape.assign(a->shape.begin() + 1, a->shape.end());
    const int64_t numel = shape_numel(in.example_shape);
    if (a->dtype == data::NpyDType::kFloat32) {
      in.what = ".npy float32 values, used as model inputs as they are";
      in.read = [a, numel](int64_t first, int64_t count, float* out) {
        a->read_float(first * numel, count * numel, 1.0f, out);
      };
    } else if (a->dtype == data::NpyDType::kUInt8) {
      need_bytes_rule(".npy values");
      in.what = ".npy uint8 values, " + bytes.rule;
      in.read = [a, numel, apply = bytes.apply](int64_t first, int64_t count, float* out) {
        apply(a->data() + first * numel, static_cast<size_t>(count * numel), out);
      };
    } else {
      DTRAIN_THROW(ValueError, "--input '", path, "': dtype '", a->descr,
                   "' is not supported; expected float32 ('<f4', model inputs as they are) or "
                   "uint8 ('|u1', preprocessed as the training data was). Convert it with "
                   "a.astype('<f4')");
    }
    return in;
  }
  data::IdxContents idx;
  try {
    idx = data::read_idx(path, 3, "images [N, H, W]");
  } catch (const ValueError& e) {
    DTRAIN_THROW(ValueError, "--input: ", e.message(), " (inputs are ", kInputKinds, ")");
  }
  need_bytes_rule("IDX images");
  in.size = idx.dims[0];
  in.example_shape = {1, idx.dims[1], idx.dims[2]};
  in.what = "uint8 IDX images, " + bytes.rule;
  const int64_t numel = idx.dims[1] * idx.dims[2];
  auto pixels = std::make_shared<const std::vector<uint8_t>>(std::move(idx.bytes));
  in.read = [pixels, numel, apply = bytes.apply](int64_t first, int64_t count, float* out) {
    apply(pixels->data() + first * numel, static_cast<size_t>(count * numel), out);
  };
  return in;
}

/// `s` without leading dimensions of size 1 (keeping at least one).
Shape without_leading_ones(Shape s) {
  while (s.size() > 1 && s[0] == 1) s.erase(s.begin());
  return s;
}

/// The class indices of a labels file (their range is checked against the model's classes later).
std::vector<int64_t> read_labels(const std::string& path) {
  require_file("--labels", path, std::string("give ") + kLabelKinds);
  std::vector<int64_t> labels;
  if (file_prefix(path, 6) == "\x93NUMPY") {
    const data::NpyArray y = data::read_npy(path);
    DTRAIN_CHECK(y.is_integer(), "--labels '", path, "': dtype '", y.descr,
                 "'; labels are class indices of an integer type. Convert them with "
                 "y.astype('<i8')");
    const bool column = y.shape.size() == 2 && y.shape[1] == 1;
    DTRAIN_CHECK(y.shape.size() == 1 || column, "--labels '", path, "': shape ", shape_str(y.shape),
                 "; expected [N] (or [N, 1]), one class index per input");
    labels.resize(static_cast<size_t>(y.shape[0]));
    y.read_int64(0, y.shape[0], labels.data());
  } else {
    data::IdxContents idx;
    try {
      idx = data::read_idx(path, 1, "labels [N]");
    } catch (const ValueError& e) {
      DTRAIN_THROW(ValueError, "--labels: ", e.message(), " (labels are ", kLabelKinds, ")");
    }
    labels.assign(idx.bytes.begin(), idx.bytes.end());
  }
  return labels;
}

}  // namespace

PredictSummary predict(const PredictOptions& o, std::FILE* out, std::FILE* info) {
  DTRAIN_CHECK(o.format == "text" || o.format == "csv", "predict: format '", o.format,
               "'; expected text or csv");
  DTRAIN_CHECK(o.top >= 1 && o.limit >= 0 && o.batch_size >= 1, "predict: top ", o.top, ", limit ",
               o.limit, ", batch_size ", o.batch_size,
               "; expected top >= 1, limit >= 0, batch_size >= 1");
  require_file("checkpoint", o.checkpoint, kCheckpointFix);
  DTRAIN_CHECK(file_prefix(o.checkpoint, 4) == "DTCK", "'", o.checkpoint,
               "' is not a dtrain checkpoint (it does not start with DTCK); ", kCheckpointFix);
  const CheckpointData ckpt = load_checkpoint(o.checkpoint);
  const Config c = parse_config(ckpt.config_yaml, o.checkpoint, o.overrides);

  // The inputs and labels first: a wrong file fails before the training set is read.
  const Inputs inputs = open_inputs(o.input, byte_preprocessing(c));
  std::vector<int64_t> labels;
  if (!o.labels.empty()) {
    labels = read_labels(o.labels);
    DTRAIN_CHECK(static_cast<int64_t>(labels.size()) == inputs.size, "--labels '", o.labels,
                 "' has ", labels.size(), " labels but --input '", o.input, "' has ", inputs.size,
                 " examples; expected one label per input. Mixed-up files?");
  }

  // The model as `dtrain eval` builds it: its training set gives the example shape and classes.
  const CheckpointModel built = model_from_checkpoint(ckpt, c, o.checkpoint);
  const Datasets& sets = built.sets;
  const data::Dataset& train_set = *sets.train;
  DTRAIN_CHECK(train_set.example_dtype() == DType::kFloat32, "checkpoint '", o.checkpoint,
               "': the model takes ", dtype_name(train_set.example_dtype()),
               " examples (token ids); predict handles classifiers of float inputs");
  const Shape model_shape = train_set.example_shape();
  DTRAIN_CHECK(inputs.example_shape == model_shape ||
                   without_leading_ones(inputs.example_shape) == without_leading_ones(model_shape),
               "--input '", o.input, "': examples of shape ", shape_str(inputs.example_shape), " (",
               inputs.size, " of them); the model of '", o.checkpoint, "' takes examples of shape ",
               shape_str(model_shape), ". Give inputs shaped [N, ",
               shape_str(model_shape).substr(1, shape_str(model_shape).size() - 2), "]");
  const nn::ModulePtr& model = built.model;

  for (size_t i = 0; i < labels.size(); ++i) {
    DTRAIN_CHECK(labels[i] >= 0 && labels[i] < train_set.num_classes(), "--labels '", o.labels,
                 "': label ", labels[i], " at index ", i, " is out of range; the model has ",
                 train_set.num_classes(), " classes (0..", train_set.num_classes() - 1, ")");
  }

  PredictSummary s;
  s.labelled = !o.labels.empty();
  const int64_t n = o.limit > 0 ? std::min(o.limit, inputs.size) : inputs.size;
  std::fprintf(info, "predict: %lld of %lld examples %s from %s (%s); checkpoint %s (step %lld)\n",
               static_cast<long long>(n), static_cast<long long>(inputs.size),
               shape_str(inputs.example_shape).c_str(), o.input.c_str(), inputs.what.c_str(),
               o.checkpoint.c_str(), static_cast<long long>(ckpt.step));

  NoGradGuard no_grad;  // inference only: no graph is kept between batches
  const bool csv = o.format == "csv";
  std::vector<double> probs;
  std::vector<int64_t> order;
  for (int64_t first = 0; first < n; first += o.batch_size) {
    const int64_t count = std::min(o.batch_size, n - first);
    Shape batch_shape = {count};
    batch_shape.insert(batch_shape.end(), model_shape.begin(), model_shape.end());
    Tensor x = empty(batch_shape, DType::kFloat32);
    inputs.read(first, count, x.data<float>());
    const Tensor logits = model->forward(x);
    DTRAIN_CHECK(logits.dim() == 2 && logits.size(0) == count, "checkpoint '", o.checkpoint,
                 "': the model's output has shape ", shape_str(logits.shape()), " for ", count,
                 " examples; predict expects class scores [N, classes]");
    const int64_t classes = logits.size(1);
    const std::vector<float> scores = logits.to_vector<float>();
    // The same argmax as `dtrain eval`, so that accuracies agree.
    const std::vector<int64_t> predicted = argmax(logits, 1).to_vector<int64_t>();
    if (first == 0) {
      s.classes = classes;
      if (csv) {
        std::fputs("index,predicted", out);
        for (int64_t k = 0; k < classes; ++k)
          std::fprintf(out, ",p%lld", static_cast<long long>(k));
        std::fputs(s.labelled ? ",label\n" : "\n", out);
      }
    }
    for (int64_t b = 0; b < count; ++b) {
      // Softmax in double, shifted by the row's maximum.
      const float* row = scores.data() + b * classes;
      const double top_score = *std::max_element(row, row + classes);
      probs.assign(static_cast<size_t>(classes), 0.0);
      double sum = 0;
      for (int64_t k = 0; k < classes; ++k) sum += probs[k] = std::exp(row[k] - top_score);
      for (double& p : probs) p /= sum;
      const int64_t index = first + b, pred = predicted[b];
      if (csv) {
        std::fprintf(out, "%lld,%lld", static_cast<long long>(index), static_cast<long long>(pred));
        for (const double p : probs) std::fprintf(out, ",%.9g", p);
      } else {
        std::fprintf(out, "index=%lld predicted=%lld p=%.6f", static_cast<long long>(index),
                     static_cast<long long>(pred), probs[pred]);
      }
      if (s.labelled) {
        std::fprintf(out, csv ? ",%lld" : " label=%lld", static_cast<long long>(labels[index]));
        s.correct += labels[index] == pred;
      }
      if (!csv && o.top > 1) {
        order.resize(static_cast<size_t>(classes));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t i, int64_t j) { return probs[i] > probs[j]; });
        const int64_t k_max = std::min(o.top, classes);
        for (int64_t k = 0; k < k_max; ++k) {
          std::fprintf(out, "%s%lld:%.6f", k ? "," : " top=", static_cast<long long>(order[k]),
                       probs[order[k]]);
        }
      }
      std::fputc('\n', out);
    }
    s.examples += count;
  }
  if (s.labelled) {
    std::fflush(out);  // `info` may share a terminal or pipe with `out`: keep the lines whole
    std::fprintf(csv ? info : out, "predict: accuracy=%.4f correct=%lld examples=%lld\n",
                 s.accuracy(), static_cast<long long>(s.correct),
                 static_cast<long long>(s.examples));
  }
  return s;
}

}  // namespace dtrain::train
