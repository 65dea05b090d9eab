// The command line: train, launch, config check/reference, eval, export, predict. Exit codes: 0
// success, 2 usage or config error, 1 run-time failure (launch: 130/143 when interrupted). The only
// place that catches errors at the top.
#include "dtrain/launcher/cli.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cctype>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include "dtrain/data/idx.h"
#include "dtrain/distributed/registry.h"
#include "dtrain/launcher/cluster.h"
#include "dtrain/launcher/launch.h"
#include "dtrain/tensor/hash.h"
#include "dtrain/tensor/printable.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/config.h"
#include "dtrain/train/factories.h"
#include "dtrain/train/onnx_export.h"
#include "dtrain/train/predict.h"
#include "dtrain/train/run.h"
#include "dtrain/train/safetensors.h"
#include "dtrain/train/stop_signal.h"
#include "dtrain/train/trainer.h"

#ifndef DTRAIN_VERSION
#define DTRAIN_VERSION "0.0.0"
#endif

namespace {

constexpr int kUsageError = 2;
constexpr int kRuntimeError = 1;

/// This process's job for `c`, or exit status 2 with the reason when its backend cannot run here.
std::optional<dtrain::dist::Job> make_job(const dtrain::train::Config& c,
                                          const dtrain::dist::JobSpec& base, int& exit_code) {
  const std::string why = dtrain::dist::backend_unavailable_reason(c.strategy.backend);
  if (!why.empty()) {
    std::fprintf(stderr, "dtrain: strategy.backend: %s\n", why.c_str());
    exit_code = kUsageError;
    return std::nullopt;
  }
  return dtrain::dist::Job(dtrain::train::job_spec_for(c, base));
}

/// The launcher's settings: the config's `launcher` section, then the flags given on the command
/// line (which win).
struct LaunchFlags {
  dtrain::launch::LaunchOptions values;
  std::vector<std::pair<CLI::Option*, std::function<void(dtrain::launch::LaunchOptions&)>>> given;
};

/// `program` as a path execve can run: as given when it names a file, else found on PATH; "" when
/// there is no such executable.
std::string find_executable(const std::string& program) {
  if (program.find('/') != std::string::npos) {
    return ::access(program.c_str(), X_OK) == 0 ? std::filesystem::absolute(program).string() : "";
  }
  const char* path = std::getenv("PATH");
  const std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    const size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::string dir = dirs.substr(start, end - start);
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0 && !std::filesystem::is_directory(candidate)) {
      return candidate;
    }
    start = end + 1;
  }
  return "";
}

/// `dtrain launch [CONFIG [OVERRIDES]] [-- PROGRAM ARGS...]`: without a program every worker runs
/// `dtrain train CONFIG OVERRIDES`; with one, every worker runs it (the config, when given, only
/// supplies the launcher section).
int run_launch_command(const std::string& config_path, const std::vector<std::string>& overrides,
                       const std::vector<std::string>& command, LaunchFlags& flags) {
  using namespace dtrain::train;
  if (config_path.empty() && command.empty()) {
    std::fprintf(stderr,
                 "dtrain launch: give a config to train (dtrain launch CONFIG) or a program to "
                 "run after -- (dtrain launch --nproc-per-node 2 -- ./my_trainer ARGS)\n");
    return kUsageError;
  }
  const Config c = config_path.empty() ? Config{} : load_config(config_path, overrides);
  dtrain::launch::LaunchOptions o;
  static_cast<LauncherConfig&>(o) = c.launcher;
  o.config_path = config_path;
  o.overrides = overrides;
  for (auto& [option, apply] : flags.given) {
    if (option->count() > 0) apply(o);
  }
  o.version = DTRAIN_VERSION;
  o.worker_executable = std::filesystem::read_symlink("/proc/self/exe").string();
  if (o.node_rank >= o.nnodes) {
    std::fprintf(stderr,
                 "dtrain launch: --node-rank %d is not below --nnodes %d (nodes count from 0)\n",
                 o.node_rank, static_cast<int>(o.nnodes));
    return kUsageError;
  }
  if (o.nnodes > 1 && o.rdzv_endpoint.empty()) {
    std::fprintf(stderr,
                 "dtrain launch: --nnodes %d needs --rdzv-endpoint HOST:PORT (or "
                 "launcher.rdzv_endpoint): an address of node 0 that every node can reach, where "
                 "node 0's launcher hosts the store\n",
                 static_cast<int>(o.nnodes));
    return kUsageError;
  }
  if (!command.empty()) {
    const std::string program = find_executable(command[0]);
    if (program.empty()) {
      std::fprintf(stderr,
                   "dtrain launch: '%s' is not an executable file%s; give its path or put it on "
                   "PATH\n",
                   command[0].c_str(), command[0].find('/') == std::string::npos ? " on PATH" : "");
      return kUsageError;
    }
    o.command = command;
    o.command[0] = program;
    // Every node must run the same program with the same arguments.
    std::string line;
    for (const std::string& a : command) line += a + '\n';
    o.config_hash = std::to_string(dtrain::fnv1a(line));
    return dtrain::launch::run_launch(o);
  }
  o.config_hash = c.hash();
  if (c.cluster.world_size > 0) {
    std::fprintf(stderr,
                 "dtrain launch: the config's cluster section (cluster.world_size %lld) describes "
                 "a job started without a launcher; drop it to use dtrain launch\n",
                 static_cast<long long>(c.cluster.world_size));
    return kUsageError;
  }
  const int world = static_cast<int>(o.nnodes * o.nproc_per_node);
  if (world > 1 && !dtrain::find_strategy(c.strategy.type).spans_processes) {
    std::fprintf(
        stderr,
        "dtrain launch: strategy.type is %s, which trains in one process, but the launcher "
        "would start %d workers; use strategy.type=ddp (or multi_worker_mirrored)\n",
        c.strategy.type.c_str(), world);
    return kUsageError;
  }
  return dtrain::launch::run_launch(o);
}

/// True when `path` starts with a dtrain checkpoint's magic.
bool is_checkpoint_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::string_view(magic, 4) == "DTCK";
}

/// The `section:` block of a config's YAML (as Config::to_yaml writes it), header included.
std::string yaml_section(const std::string& yaml, const std::string& section) {
  const size_t start = yaml.rfind(section + ":\n", 0) == 0 ? 0 : yaml.find("\n" + section + ":\n");
  if (start == std::string::npos) return "";
  const size_t from = start == 0 ? 0 : start + 1;
  size_t end = from;
  while ((end = yaml.find('\n', end)) != std::string::npos && end + 1 < yaml.size() &&
         yaml[end + 1] == ' ') {
    ++end;
  }
  return yaml.substr(from, end == std::string::npos ? std::string::npos : end + 1 - from);
}

int report_config_error(const dtrain::train::ConfigError& e) {
  std::fprintf(stderr, "dtrain: %s\n", e.message().c_str());
  return kUsageError;
}

}  // namespace

namespace dtrain {

int cli_main(int argc, char** argv) {
  // What follows "--" is the program `dtrain launch` runs; CLI11 never sees it.
  std::vector<std::string> command;
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--") {
      command.assign(argv + i + 1, argv + argc);
      argc = i;
      break;
    }
  }
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
      "launch",
      "Start this node's workers, watch them and restart the job after a failure. Workers run "
      "`train CONFIG`, or the program given after --: launch [OPTIONS] -- PROGRAM ARGS...");
  launch->add_option("config", config_path, "YAML config file (optional with a program after --)")
      ->check(CLI::ExistingFile);
  launch->add_option("overrides", overrides, "section.key=value overrides for every worker");
  LaunchFlags flags;
  {
    using dtrain::launch::LaunchOptions;
    auto& v = flags.values;
    const auto given = [&](CLI::Option* option, auto apply) {
      flags.given.emplace_back(option, apply);
    };
    // torchrun's spellings (--nproc_per_node ...) are accepted too.
    given(launch
              ->add_option("--nproc-per-node,--nproc_per_node", v.nproc_per_node,
                           "workers on this node")
              ->check(CLI::Range(1, 1024)),
          [&v](LaunchOptions& o) { o.nproc_per_node = v.nproc_per_node; });
    given(launch->add_option("--nnodes", v.nnodes, "machines in the job")
              ->check(CLI::Range(1, 65536)),
          [&v](LaunchOptions& o) { o.nnodes = v.nnodes; });
    given(launch
              ->add_option("--node-rank,--node_rank", v.node_rank,
                           "this machine's index, 0 hosts the store")
              ->check(CLI::Range(0, 65535)),
          [&v](LaunchOptions& o) { o.node_rank = v.node_rank; });
    given(launch->add_option("--rdzv-endpoint,--rdzv_endpoint", v.rdzv_endpoint,
                             "HOST:PORT of node 0's store (node 0 listens there)"),
          [&v](LaunchOptions& o) { o.rdzv_endpoint = v.rdzv_endpoint; });
    given(launch
              ->add_option("--max-restarts,--max_restarts", v.max_restarts,
                           "restarts after a failure")
              ->check(CLI::Range(0, 1'000'000)),
          [&v](LaunchOptions& o) { o.max_restarts = v.max_restarts; });
    given(launch
              ->add_option("--heartbeat-timeout-s", v.heartbeat_timeout_s,
                           "a silent worker counts as failed after this long (0: never)")
              ->check(CLI::NonNegativeNumber),
          [&v](LaunchOptions& o) { o.heartbeat_timeout_s = v.heartbeat_timeout_s; });
    given(launch->add_option("--log-dir,--log_dir", v.log_dir,
                             "write worker output to DIR/rank_N.log"),
          [&v](LaunchOptions& o) { o.log_dir = v.log_dir; });
    given(launch
              ->add_option("--cpu-bind", v.cpu_bind,
                           "auto: each worker on its own cores when there are enough; none")
              ->check(CLI::IsMember({"auto", "none"})),
          [&v](LaunchOptions& o) { o.cpu_bind = v.cpu_bind; });
  }

  CLI::App* config = app.add_subcommand("config", "Inspect configs");
  config->require_subcommand(1);
  CLI::App* check =
      config->add_subcommand("check", "Print the resolved config, or every problem found (exit 2)");
  check->add_option("config", config_path, "YAML config file")->required();
  check->add_option("overrides", overrides, "section.key=value overrides");
  CLI::App* reference = config->add_subcommand(
      "reference", "Print every config key with its type, default and meaning (Markdown)");

  CLI::App* eval = app.add_subcommand(
      "eval",
      "Evaluate a checkpoint on the test split: eval CHECKPOINT (its own config) or eval CONFIG "
      "--checkpoint CHECKPOINT");
  eval->add_option("config", config_path, "checkpoint (.dtck), or a YAML config with --checkpoint")
      ->required()
      ->check(CLI::ExistingFile);
  eval->add_option("overrides", overrides, "section.key=value overrides, e.g. data.path=DIR");
  eval->add_option("--checkpoint", checkpoint_path, "checkpoint file (.dtck) to evaluate");

  CLI::App* exporter = app.add_subcommand("export", "Export a checkpoint's parameters by name");
  exporter->add_option("checkpoint", checkpoint_path, "checkpoint file (.dtck)")->required();
  exporter
      ->add_option("--format", format,
                   "safetensors: the parameters and buffers by name; onnx: the inference graph "
                   "(opset 17) with those tensors")
      ->check(CLI::IsMember({"safetensors", "onnx"}));
  exporter->add_option("-o,--output", output_path, "output file")->required();

  dtrain::train::PredictOptions predict_options;
  CLI::App* predictor = app.add_subcommand(
      "predict", "Print a checkpoint's class predictions for the examples of an IDX or .npy file");
  predictor->add_option("checkpoint", predict_options.checkpoint, "checkpoint file (.dtck)")
      ->required();
  predictor->add_option("overrides", predict_options.overrides,
                        "section.key=value overrides of its config, e.g. data.path=DIR");
  predictor
      ->add_option("--input", predict_options.input,
                   "IDX images (idx3, .gz or plain), or .npy [N, ...] of float32 (model inputs as "
                   "they are) or uint8 (preprocessed as the training data was)")
      ->required();
  predictor->add_option("--labels", predict_options.labels,
                        "IDX labels or .npy integers: adds the true label and the accuracy");
  predictor->add_option("--top", predict_options.top, "text: also list the K most probable classes")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  predictor->add_option("--limit", predict_options.limit, "only the first N inputs")
      ->check(CLI::PositiveNumber);
  predictor
      ->add_option("--format", predict_options.format,
                   "text: one line per input; csv: index,predicted,p0,...,p{C-1}[,label]")
      ->check(CLI::IsMember({"text", "csv"}));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    // `--train.epochs=3` (the habit from other tools) is an override without its dashes.
    for (int i = 1; i < argc && code != 0; ++i) {
      const std::string arg = argv[i];
      const std::string name = arg.substr(0, arg.find('='));
      if (arg.size() > 2 && arg.starts_with("--") &&
          std::isalpha(static_cast<unsigned char>(arg[2])) && name.find('.') != std::string::npos) {
        std::fprintf(stderr, "dtrain: overrides are written without dashes: %s%s\n",
                     dtrain::printable(arg.substr(2)).c_str(),
                     arg.find('=') == std::string::npos ? "=VALUE" : "");
      }
    }
    return code == 0 ? 0 : kUsageError;
  }

  try {
    using namespace dtrain::train;
    if (!command.empty() && !*launch) {
      std::fprintf(stderr, "dtrain: only `launch` runs a program given after --\n");
      return kUsageError;
    }
    if (*launch) return run_launch_command(config_path, overrides, command, flags);
    if (*train) {
      Config c = load_config(config_path, overrides);
      std::optional<dtrain::launch::ClusterJob> cluster;
      try {
        cluster.emplace(c.cluster.world_size, c.cluster.rank, c.cluster.store,
                        std::chrono::duration<double>(c.strategy.ddp.timeout).count());
      } catch (const dtrain::ValueError& e) {  // a job described twice, or no token
        std::fprintf(stderr, "dtrain: %s\n", e.message().c_str());
        return kUsageError;
      }
      int failed = 0;
      std::optional<dtrain::dist::Job> job = make_job(c, cluster->spec(), failed);
      if (!job) return failed;
      const TrainResult r = train_in_job(c, *job);
      cluster->finish();
      // Stopped by a signal after its checkpoint: 128 + the signal, on every rank, so that a
      // scheduler or script can tell a preempted run (resume it) from a finished one.
      if (r.stopped_by_signal != 0)
        return dtrain::train::exit_status_after_signal(r.stopped_by_signal);
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
      // What training would read first: a check that passes should not end in a missing file.
      std::vector<std::string> problems;
      if (c.data.name == "fashion_mnist") {
        try {
          dtrain::data::locate_fashion_mnist(c.data.path);
        } catch (const dtrain::ValueError& e) {
          problems.push_back("data.path: " + e.message());
        }
      }
      const std::string& resume = c.train.resume;
      if (!resume.empty() && resume != "auto" && resume != "never" && !is_checkpoint_file(resume)) {
        std::error_code ec;
        problems.push_back("train.resume: '" + dtrain::printable(resume) + "' " +
                           (std::filesystem::exists(resume, ec) ? "is not a dtrain checkpoint"
                                                                : "does not exist") +
                           "; give a checkpoint (.dtck), auto or never");
      }
      if (!c.train.init_from.empty()) {
        try {
          read_safetensors(c.train.init_from);
        } catch (const dtrain::ValueError& e) {
          problems.push_back("train.init_from: " + e.message());
        }
      }
      if (!problems.empty()) {
        for (const std::string& p : problems) {
          std::fprintf(stderr, "dtrain: %s: %s\n", dtrain::printable(config_path).c_str(),
                       p.c_str());
        }
        return kUsageError;
      }
      std::printf("# %s is valid (config hash %s)\n%s", config_path.c_str(), c.hash().c_str(),
                  c.to_yaml().c_str());
      return 0;
    }
    if (*eval) {
      // Without --checkpoint the file is a checkpoint, which carries its resolved config.
      if (checkpoint_path.empty()) {
        if (!is_checkpoint_file(config_path)) {
          std::fprintf(stderr,
                       "dtrain eval: %s is not a checkpoint; give a checkpoint (.dtck), or a "
                       "config with --checkpoint CHECKPOINT\n",
                       config_path.c_str());
          return kUsageError;
        }
        checkpoint_path = config_path;
      }
      Config c = checkpoint_path == config_path
                     ? parse_config(load_checkpoint(checkpoint_path).config_yaml, checkpoint_path,
                                    overrides)
                     : load_config(config_path, overrides);
      int failed = 0;
      std::optional<dtrain::dist::Job> job = make_job(c, dtrain::dist::job_spec_from_env(), failed);
      if (!job) return failed;
      const EvalResult r = evaluate_in_job(c, *job, checkpoint_path);
      std::printf("eval: test_accuracy=%.4f test_loss=%.4f examples=%lld\n", r.accuracy, r.loss,
                  static_cast<long long>(r.examples));
      return 0;
    }
    if (*predictor) {
      predict(predict_options, stdout, stderr);
      return 0;
    }
    if (*exporter) {
      const CheckpointData ckpt = load_checkpoint(checkpoint_path);
      if (format == "onnx") {
        // The model as the checkpoint's config builds it, in eval mode, with its weights; the
        // dataset gives the example's shape and type.
        const CheckpointModel built = model_from_checkpoint(
            ckpt, parse_config(ckpt.config_yaml, checkpoint_path, {}), checkpoint_path);
        const Datasets& sets = built.sets;
        nn::Module& model = *built.model;
        OnnxExportOptions options;
        options.input_dtype = sets.train->example_dtype();
        options.metadata = {{"dtrain_step", std::to_string(ckpt.step)},
                            {"dtrain_model", yaml_section(ckpt.config_yaml, "model")},
                            {"dtrain_checkpoint", checkpoint_path}};
        write_onnx(output_path, model, sets.train->example_shape(), options);
        std::printf("wrote %s (opset %d): input '%s', %s examples of shape %s; output '%s'\n",
                    output_path.c_str(), kOnnxOpset, options.input_name.c_str(),
                    std::string(dtype_name(options.input_dtype)).c_str(),
                    shape_str(sets.train->example_shape()).c_str(), options.output_name.c_str());
        return 0;
      }
      write_safetensors(output_path, ckpt.model,
                        {{"format", "pt"},
                         {"dtrain_step", std::to_string(ckpt.step)},
                         {"dtrain_model", yaml_section(ckpt.config_yaml, "model")},
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

}  // namespace dtrain
