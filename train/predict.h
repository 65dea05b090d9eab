// `dtrain predict`: a checkpoint's class predictions for the examples of an IDX images file or a
// .npy array, preprocessed as the checkpoint's training data was.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace dtrain::train {

struct PredictOptions {
  std::string checkpoint;              // a .dtck file; its resolved config builds the model
  std::vector<std::string> overrides;  // section.key=value on that config, e.g. data.path=DIR
  std::string input;                   // IDX images (idx3, uint8, .gz or plain) or .npy [N, ...]
  std::string labels;                  // optional: IDX labels (idx1) or .npy integers [N]
  int64_t top = 1;                     // text: list the `top` most probable classes when > 1
  int64_t limit = 0;                   // only the first `limit` inputs; 0: all
  std::string format = "text";         // text | csv
  int64_t batch_size = 256;            // examples per forward pass
};

struct PredictSummary {
  int64_t examples = 0;  // inputs predicted
  int64_t classes = 0;   // the model's output classes
  int64_t correct = 0;   // with labels: predictions equal to the label
  bool labelled = false;
  double accuracy() const { return examples > 0 ? static_cast<double>(correct) / examples : 0.0; }
};

/// Builds the model from the checkpoint's config (its training set gives the example shape, as for
/// `dtrain eval`), loads its weights in eval mode, and writes one line per input to `out`:
///   text: `index=I predicted=C p=P [label=L] [top=C1:P1,C2:P2,...]`, then with labels
///         `predict: accuracy=A correct=K examples=N`;
///   csv:  a header `index,predicted,p0,...,p{C-1}[,label]`, then one row per input (%.9g); the
///         accuracy line goes to `info` so that `out` stays CSV.
/// Inputs: IDX images become [1, H, W] examples of uint8 pixels; .npy arrays are [N, example...].
/// uint8 values are preprocessed as the training set does (data.normalize for fashion_mnist,
/// data.scale for npy; other data sets refuse bytes); float32 values are taken as model inputs
/// as they are. A note on what was read goes to `info`. Runs on the CPU, `batch_size` examples per
/// forward pass without autograd. Throws ValueError naming the file, what is wrong and the fix.
PredictSummary predict(const PredictOptions& options, std::FILE* out, std::FILE* info);

}  // namespace dtrain::train
