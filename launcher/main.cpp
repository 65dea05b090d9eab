// The dtrain executable: train, launch, config check/reference, eval, export. Exit codes:
// 0 success, 2 usage or config error, 1 run-time failure (launch: 130/143 when interrupted).
// The only place that catches errors at the top.
#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <thread>

#include "launcher/cluster.h"
#include "launcher/launch.h"
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

/// The launcher's settings: the config's `launcher` section, then the flags given on the command
/// line (which win).
struct LaunchFlags {
  dtrain::launch::LaunchOptions values;
  std::string cpu_bind;  // --cpu-bind's text
  std::vector<std::pair<CLI::Option*, std::function<void(dtrain::launch::LaunchOptions&)>>> given;
};

int run_launch_command(const std::string& config_path, const std::vector<std::string>& overrides,
                       LaunchFlags& flags) {
  using namespace dtrain::train;
  const Config c = load_config(config_path, overrides);
  dtrain::launch::LaunchOptions o;
  o.config_path = config_path;
  o.overrides = overrides;
  o.nproc_per_node = static_cast<int>(c.launcher.nproc_per_node);
  o.nnodes = static_cast<int>(c.launcher.nnodes);
  o.rdzv_endpoint = c.launcher.rdzv_endpoint;
  o.max_restarts = static_cast<int>(std::min<int64_t>(c.launcher.max_restarts, 1'000'000));
  o.heartbeat_timeout_s = c.launcher.heartbeat_timeout_s;
  o.stop_grace_s = c.launcher.stop_grace_s;
  o.rdzv_timeout_s = c.launcher.rdzv_timeout_s;
  o.log_dir = c.launcher.log_dir;
  o.cpu_bind = c.launcher.cpu_bind == "auto";
  for (auto& [option, apply] : flags.given) {
    if (option->count() > 0) apply(o);
  }
  o.config_hash = c.hash();
  o.version = DTRAIN_VERSION;
  o.worker_executable = std::filesystem::read_symlink("/proc/self/exe").string();
  if (c.cluster.world_size > 0) {
    std::fprintf(stderr,
                 "dtrain launch: the config's cluster section (cluster.world_size %lld) describes "
                 "a job started without a launcher; drop it to use dtrain launch\n",
                 static_cast<long long>(c.cluster.world_size));
    return kUsageError;
  }
  if (o.node_rank >= o.nnodes) {
    std::fprintf(stderr,
                 "dtrain launch: --node-rank %d is not below --nnodes %d (nodes count from 0)\n",
                 o.node_rank, o.nnodes);
    return kUsageError;
  }
  if (o.nnodes > 1 && o.rdzv_endpoint.empty()) {
    std::fprintf(stderr,
                 "dtrain launch: --nnodes %d needs --rdzv-endpoint HOST:PORT (or "
                 "launcher.rdzv_endpoint): an address of node 0 that every node can reach, where "
                 "node 0's launcher hosts the store\n",
                 o.nnodes);
    return kUsageError;
  }
  const int world = o.nnodes * o.nproc_per_node;
  if (world > 1 && (c.strategy.type == "single" || c.strategy.type == "mirrored")) {
    std::fprintf(
        stderr,
        "dtrain launch: strategy.type is %s, which trains in one process, but the launcher "
        "would start %d workers; use strategy.type=ddp (or multi_worker_mirrored)\n",
        c.strategy.type.c_str(), world);
    return kUsageError;
  }
  return dtrain::launch::run_launch(o);
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

  CLI::App* launch = app.add_subcommand(
      "launch", "Start this node's workers, watch them and restart the job after a failure");
  launch->add_option("config", config_path, "YAML config file")
      ->required()
      ->check(CLI::ExistingFile);
  launch->add_option("overrides", overrides, "section.key=value overrides for every worker");
  LaunchFlags flags;
  {
    using dtrain::launch::LaunchOptions;
    auto& v = flags.values;
    const auto given = [&](CLI::Option* option, auto apply) {
      flags.given.emplace_back(option, apply);
    };
    given(launch->add_option("--nproc-per-node", v.nproc_per_node, "workers on this node")
              ->check(CLI::Range(1, 1024)),
          [&v](LaunchOptions& o) { o.nproc_per_node = v.nproc_per_node; });
    given(launch->add_option("--nnodes", v.nnodes, "machines in the job")
              ->check(CLI::Range(1, 65536)),
          [&v](LaunchOptions& o) { o.nnodes = v.nnodes; });
    given(launch->add_option("--node-rank", v.node_rank, "this machine's index, 0 hosts the store")
              ->check(CLI::Range(0, 65535)),
          [&v](LaunchOptions& o) { o.node_rank = v.node_rank; });
    given(launch->add_option("--rdzv-endpoint", v.rdzv_endpoint,
                             "HOST:PORT of node 0's store (node 0 listens there)"),
          [&v](LaunchOptions& o) { o.rdzv_endpoint = v.rdzv_endpoint; });
    given(launch->add_option("--max-restarts", v.max_restarts, "restarts after a failure")
              ->check(CLI::Range(0, 1'000'000)),
          [&v](LaunchOptions& o) { o.max_restarts = v.max_restarts; });
    given(launch
              ->add_option("--heartbeat-timeout-s", v.heartbeat_timeout_s,
                           "a silent worker counts as failed after this long (0: never)")
              ->check(CLI::NonNegativeNumber),
          [&v](LaunchOptions& o) { o.heartbeat_timeout_s = v.heartbeat_timeout_s; });
    given(launch->add_option("--log-dir", v.log_dir, "write worker output to DIR/rank_N.log"),
          [&v](LaunchOptions& o) { o.log_dir = v.log_dir; });
    given(launch
              ->add_option("--cpu-bind", flags.cpu_bind,
                           "auto: each worker on its own cores when there are enough; none")
              ->check(CLI::IsMember({"auto", "none"})),
          [&flags](LaunchOptions& o) { o.cpu_bind = flags.cpu_bind == "auto"; });
  }

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
    if (*launch) return run_launch_command(config_path, overrides, flags);
    if (*train) {
      Config c = load_config(config_path, overrides);
      std::optional<dtrain::launch::ClusterJob> cluster;
      try {
        cluster.emplace(c.cluster.world_size, c.cluster.rank, c.cluster.store,
                        c.strategy.timeout_s);
      } catch (const dtrain::ValueError& e) {  // a job described twice, or no token
        std::fprintf(stderr, "dtrain: %s\n", e.message().c_str());
        return kUsageError;
      }
      const dtrain::launch::WorkerHeartbeat heartbeat;  // only under dtrain launch
      const TrainResult r = train_replicas(c);
      cluster->finish();
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
