// Initialisers.
#include "dtrain/nn/init.h"

#include <cmath>

namespace dtrain::nn::init {

std::pair<int64_t, int64_t> fans(const Tensor& w) {
  DTRAIN_CHECK(w.dim() >= 2, "init: fan in/out need a weight with at least 2 dims; got ",
               w.describe());
  int64_t receptive = 1;
  for (int64_t d = 2; d < w.dim(); ++d) receptive *= w.size(d);
  return {w.size(1) * receptive, w.size(0) * receptive};
}

void kaiming_uniform_(Tensor& w, double a, Generator& gen) {
  const double gain = std::sqrt(2.0 / (1.0 + a * a));
  const double bound = gain * std::sqrt(3.0 / static_cast<double>(fans(w).first));
  dtrain::uniform_(w, -bound, bound, gen);
}

void kaiming_normal_(Tensor& w, double a, Generator& gen) {
  const double gain = std::sqrt(2.0 / (1.0 + a * a));
  dtrain::normal_(w, 0, gain / std::sqrt(static_cast<double>(fans(w).first)), gen);
}

void xavier_uniform_(Tensor& w, double gain, Generator& gen) {
  auto [in, out] = fans(w);
  const double bound = gain * std::sqrt(6.0 / static_cast<double>(in + out));
  dtrain::uniform_(w, -bound, bound, gen);
}

void xavier_normal_(Tensor& w, double gain, Generator& gen) {
  auto [in, out] = fans(w);
  dtrain::normal_(w, 0, gain * std::sqrt(2.0 / static_cast<double>(in + out)), gen);
}

void uniform_(Tensor& t, double low, double high, Generator& gen) {
  dtrain::uniform_(t, low, high, gen);
}
void normal_(Tensor& t, double mean, double std, Generator& gen) {
  dtrain::normal_(t, mean, std, gen);
}
void zeros_(Tensor& t) { t.fill_(0); }
void ones_(Tensor& t) { t.fill_(1); }

}  // namespace dtrain::nn::init
