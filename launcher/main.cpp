// The dtrain executable: train, config check/reference, eval, export. Exit codes: 0 success,
// 2 usage or config error, 1 run-time failure. The only place that catches errors at the top.
#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <exception>
#include <iostream>
#include <thread>

#include "train/checkpoint.h"
#include "train/config.h"
#include "train/safetensors.h"
#include "train/trainer.h"

#ifndef DTRAIN_VERSION
#define DTRAIN_VERSION "0.0.0"
#endif

namespace {

constexpr int kUsageError = 2;
constexpr int kRuntimeError = 1;

dtrain::StrategyOptions strategy_options(const dtrain::train::Config& c) {
  dtrain::StrategyOptions o;
  o.type = c.strategy.type;
  o.backend = c.strategy.backend;
  o.bucket_cap_mb = c.strategy.bucket_cap_mb;
  o.timeout_s = c.strategy.timeout_s;
  o.stall_warning_s = c.strategy.stall_warning_s;
  o.find_unused_parameters = c.strategy.find_unused_parameters;
  o.broadcast_buffers = c.strategy.broadcast_buffers;
  o.comm_hook = c.strategy.comm_hook;
  o.overlap = c.strategy.overlap;
  o.devices = static_cast<int>(c.strategy.devices);
  o.check_parameters_every_steps = c.strategy.check_parameters_every_steps;
  return o;
}

/// Runs the training loop once per replica of this process (one thread each for mirrored
/// strategies) and returns the result of the replica that reports (or of the first).
dtrain::train::TrainResult train_replicas(const dtrain::train::Config& c) {
  using namespace dtrain::train;
  auto strategies = dtrain::make_replica_strategies(strategy_options(c));
  if (strategies.size() == 1) return Trainer(c, std::move(strategies[0])).run();
  const auto abort = dtrain::replica_abort(strategies);
  const size_t n = strategies.size();
  std::vector<TrainResult> results(n);
  std::vector<std::exception_ptr> errors(n);
  std::atomic<int> first_failure{-1};
  // Each replica builds its own data, model and optimiser; construction is collective (DDP
  // broadcasts rank 0's parameters), so every replica starts on its own thread.
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      try {
        results[i] = Trainer(c, std::move(strategies[i])).run();
      } catch (...) {
        errors[i] = std::current_exception();
        int none = -1;
        if (first_failure.compare_exchange_strong(none, static_cast<int>(i))) {
          // The others would wait for this replica in their next collective until the timeout.
          abort("replica " + std::to_string(i) + " of this process failed");
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first_failure >= 0) std::rethrow_exception(errors[first_failure]);
  for (const TrainResult& r : results) {
    if (r.primary) return r;
  }
  return results[0];
}

int report_config_error(const dtrain::train::ConfigError& e) {
  std::fprintf(stderr, "dtrain: %s\n", e.message().c_str());
  return kUsageError;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dtrain: data-parallel training of neural networks from a YAML config"};
  app.set_version_flag("--version", std::string("dtrain ") + DTRAIN_VERSION);
  app.require_subcommand(1);

  std::string config_path, checkpoint_path, output_path, format = "safetensors";
  std::vector<std::string> overrides;

  CLI::App* train = app.add_subcommand("train", "Train a model as the config describes");
  train->add_option("config", config_path, "YAML config file")
      ->required()
      ->check(CLI::ExistingFile);
  train->add_option("overrides", overrides, "section.key=value overrides, e.g. train.epochs=3");

  CLI::App* config = app.add_subcommand("config", "Inspect configs");
  config->require_subcommand(1);
  CLI::App* check =
      config->add_subcommand("check", "Print the resolved config, or every problem found (exit 2)");
  check->add_option("config", config_path, "YAML config file")->required();
  check->add_option("overrides", overrides, "section.key=value overrides");
  CLI::App* reference = config->add_subcommand(
      "reference", "Print every config key with its type, default and meaning (Markdown)");

  CLI::App* eval = app.add_subcommand("eval", "Evaluate a checkpoint on the test split");
  eval->add_option("config", config_path, "YAML config file")->required()->check(CLI::ExistingFile);
  eval->add_option("overrides", overrides, "section.key=value overrides");
  eval->add_option("--checkpoint", checkpoint_path, "checkpoint file (.dtck)")->required();

  CLI::App* exporter = app.add_subcommand("export", "Export a checkpoint's parameters by name");
  exporter->add_option("checkpoint", checkpoint_path, "checkpoint file (.dtck)")->required();
  exporter->add_option("--format", format, "output format")->check(CLI::IsMember({"safetensors"}));
  exporter->add_option("-o,--output", output_path, "output file")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kUsageError;
  }

  try {
    using namespace dtrain::train;
    if (*train) {
      Config c = load_config(config_path, overrides);
      const TrainResult r = train_replicas(c);
      if (!r.primary) return 0;  // rank 0 reports for the job
      if (c.train.stop_at_step > 0 && r.stopped_early) {
        std::printf("stopped at step %lld (train.stop_at_step); checkpoint %s\n",
                    static_cast<long long>(r.steps), r.last_checkpoint.c_str());
      }
      std::printf("%s\n", r.final_line().c_str());
      return 0;
    }
    if (*reference) {
      std::fputs(config_reference_markdown().c_str(), stdout);
      return 0;
    }
    if (*check) {
      Config c = load_config(config_path, overrides);
      std::printf("# %s is valid (config hash %s)\n%s", config_path.c_str(), c.hash().c_str(),
                  c.to_yaml().c_str());
      return 0;
    }
    if (*eval) {
      Config c = load_config(config_path, overrides);
      Trainer trainer(c, dtrain::make_strategy(strategy_options(c)));
      const EvalResult r = trainer.evaluate_checkpoint(checkpoint_path);
      std::printf("eval: test_accuracy=%.4f test_loss=%.4f examples=%lld\n", r.accuracy, r.loss,
                  static_cast<long long>(r.examples));
      return 0;
    }
    if (*exporter) {
      const CheckpointData ckpt = load_checkpoint(checkpoint_path);
      write_safetensors(output_path, ckpt.model,
                        {{"format", "pt"},
                         {"dtrain_step", std::to_string(ckpt.step)},
                         {"dtrain_checkpoint", checkpoint_path}});
      std::printf("wrote %zu tensors to %s\n", ckpt.model.size(), output_path.c_str());
      return 0;
    }
  } catch (const dtrain::train::ConfigError& e) {
    return report_config_error(e);
  } catch (const dtrain::Error& e) {
    std::fprintf(stderr, "dtrain: error: %s\n", e.message().c_str());
    return kRuntimeError;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dtrain: error: %s\n", e.what());
    return kRuntimeError;
  }
  return kUsageError;
}
