// Autograd on a single learnable scalar: recovers the exponent phi of f(x) = x^phi from samples
// x in [0.5, 2] by minimising the mean squared error of exp(phi * log x) with Adam. (pow takes a
// constant exponent; a learnable one goes through exp and log.) Run:
//   power_law
// Prints "power_law: phi = P (true 1.7, error E)" and exits 1 when the error exceeds 1e-3.
#include <cmath>
#include <cstdio>

#include "dtrain/dtrain.h"

using namespace dtrain;

int main() {
  constexpr double kTruePhi = 1.7;
  constexpr int kSteps = 300;

  Generator gen(/*seed=*/3);
  const Tensor x = uniform({256}, 0.5, 2.0, gen);
  const Tensor y = pow(x, kTruePhi);
  const Tensor log_x = log(x);  // constant: x needs no gradient

  Tensor phi = full({1}, 1.0).set_requires_grad();  // the initial guess, 1
  nn::Adam opt({phi}, {.lr = 0.05});
  nn::StepLR schedule(opt, /*step_size=*/100, /*gamma=*/0.1);  // settle on the minimum
  for (int step = 0; step < kSteps; ++step) {
    opt.zero_grad();
    Tensor loss = mse_loss(exp(phi * log_x), y);  // phi [1] broadcasts over log_x [256]
    loss.backward();
    opt.step();
    schedule.step();
  }

  const double found = phi.item<float>();
  const double error = std::abs(found - kTruePhi);
  std::printf("power_law: phi = %.6f (true %.1f, error %.1e)\n", found, kTruePhi, error);
  return error <= 1e-3 ? 0 : 1;
}
