// Trains an MLP 784-256-128-10 on Fashion-MNIST with SGD + momentum using only the public C++ API
// (tensors, autograd, nn): the loop a libtorch user would write. Usage:
//   train_mlp [DATA_DIR=/usr/share/datasets/fashion-mnist] [EPOCHS=1]
#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "dtrain/nn/layers.h"
#include "dtrain/nn/loss.h"
#include "dtrain/nn/lr_scheduler.h"
#include "dtrain/nn/optim.h"

using namespace dtrain;

namespace {

/// Reads a gzip-compressed IDX file (big-endian header) into bytes; returns the dims.
std::vector<uint8_t> read_idx(const std::string& path, std::vector<int64_t>& dims) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + path);
  std::vector<uint8_t> bytes;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) bytes.insert(bytes.end(), buf, buf + n);
  gzclose(f);
  if (bytes.size() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08)
    throw std::runtime_error(path + ": not an unsigned-byte IDX file");
  const int rank = bytes[3];
  size_t offset = 4 + 4 * rank, count = 1;
  dims.clear();
  for (int d = 0; d < rank; ++d) {
    const uint8_t* p = &bytes[4 + 4 * d];
    dims.push_back((int64_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3]);
    count *= dims.back();
  }
  if (bytes.size() != offset + count) throw std::runtime_error(path + ": truncated");
  return {bytes.begin() + offset, bytes.end()};
}

struct Split {
  Tensor images;  // [N, 784], scaled to [0, 1] then standardised
  Tensor labels;  // [N] int64
};

Split load(const std::string& dir, const std::string& prefix) {
  std::vector<int64_t> idims, ldims;
  auto img = read_idx(dir + "/" + prefix + "-images-idx3-ubyte.gz", idims);
  auto lab = read_idx(dir + "/" + prefix + "-labels-idx1-ubyte.gz", ldims);
  const int64_t n = idims[0], pixels = idims[1] * idims[2];
  std::vector<float> x(img.size());
  // Fashion-MNIST's mean and standard deviation of pixel values in [0, 1].
  for (size_t i = 0; i < img.size(); ++i) x[i] = (img[i] / 255.0f - 0.2860f) / 0.3530f;
  std::vector<int64_t> y(lab.begin(), lab.end());
  return {from_vector(x, {n, pixels}), from_vector(y, {n})};
}

double accuracy(nn::Module& model, const Split& s) {
  NoGradGuard no_grad;
  model.eval();
  const int64_t n = s.labels.size(0), batch = 1000;
  int64_t correct = 0;
  for (int64_t b = 0; b < n; b += batch) {
    Tensor pred = argmax(model(slice(s.images, 0, b, b + batch)), 1);
    auto p = pred.to_vector<int64_t>();
    auto t = slice(s.labels, 0, b, b + batch).to_vector<int64_t>();
    for (size_t i = 0; i < p.size(); ++i) correct += p[i] == t[i];
  }
  model.train();
  return static_cast<double>(correct) / n;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "/usr/share/datasets/fashion-mnist";
  const int epochs = argc > 2 ? std::stoi(argv[2]) : 1;
  try {
    const Split train = load(dir, "train"), test = load(dir, "t10k");
    manual_seed(0);
    nn::Sequential model{std::make_shared<nn::Linear>(784, 256), std::make_shared<nn::ReLU>(),
                         std::make_shared<nn::Linear>(256, 128), std::make_shared<nn::ReLU>(),
                         std::make_shared<nn::Linear>(128, 10)};
    const int64_t batch = 64, n = train.labels.size(0), steps_per_epoch = n / batch;
    nn::SGD opt(model.parameters(), {.lr = 0.05, .momentum = 0.9});
    nn::CosineLR schedule(opt, steps_per_epoch * epochs);
    nn::CrossEntropyLoss loss_fn;
    Generator shuffle_gen(0, 7);
    const auto start = std::chrono::steady_clock::now();
    for (int epoch = 0; epoch < epochs; ++epoch) {
      // A shuffled order from the Philox stream: argsort of uniform keys.
      auto keys = rand({n}, shuffle_gen).to_vector<float>();
      std::vector<int64_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(),
                [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
      double running = 0;
      for (int64_t s = 0; s < steps_per_epoch; ++s) {
        Tensor idx = from_vector(
            std::vector<int64_t>(order.begin() + s * batch, order.begin() + (s + 1) * batch));
        Tensor x = embedding(train.images, idx);  // row gather
        Tensor y = ops::embedding(train.labels.view({n, 1}), idx).view({batch});
        opt.zero_grad();
        Tensor loss = loss_fn(model(x), y);
        loss.backward();
        opt.step();
        schedule.step();
        running += loss.item<float>();
        if ((s + 1) % 200 == 0) {
          std::printf("epoch %d step %lld/%lld loss %.4f\n", epoch + 1,
                      static_cast<long long>(s + 1), static_cast<long long>(steps_per_epoch),
                      running / 200);
          running = 0;
        }
      }
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("test_accuracy=%.4f samples_per_sec=%.0f wall_s=%.1f\n", accuracy(model, test),
                epochs * steps_per_epoch * batch / secs, secs);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_mlp: %s\n", e.what());
    return 1;
  }
}
