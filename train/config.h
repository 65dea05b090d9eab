// The run configuration: typed sections with defaults, read from YAML and `section.key=value`
// overrides, and checked against one schema (train/config.cpp) that also generates docs/config.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dtrain/strategies/strategy.h"
#include "dtrain/tensor/check.h"
#include "dtrain/train/registry.h"
#include "dtrain/train/sequential.h"

namespace dtrain::train {

struct ModelConfig {
  std::string type = "mlp";                  // mlp | cnn | sequential | a registered model
  std::vector<int64_t> hidden = {256, 128};  // mlp: hidden layer widths
  std::string activation = "relu";           // relu | gelu | tanh | sigmoid
  double dropout = 0.0;
  bool batch_norm = false;
  bool sync_batch_norm = false;  // replicas' BatchNorm layers use the global batch's statistics
  std::vector<int64_t> channels = {32, 64};  // cnn: output channels of the two 5x5 convolutions
  int64_t fc_units = 1024;                   // cnn: width of the hidden fully connected layer
  std::vector<LayerSpec> layers;             // sequential: the layers, input side first
  Options options{"model"};                  // the keys a registered model declares
};

struct DataConfig {
  std::string name = "fashion_mnist";  // a registered dataset: fashion_mnist, synthetic, ...
  std::string path = "/usr/share/datasets/fashion-mnist";
  std::string normalize = "standard";  // none | unit | standard
  int64_t synthetic_train_size = 60000;
  int64_t synthetic_test_size = 10000;
  std::vector<int64_t> synthetic_shape = {1, 28, 28};
  int64_t synthetic_classes = 10;
  int64_t prefetch = 2;
  int64_t crop_padding = 0;      // training images: pad, then crop at a random offset
  bool horizontal_flip = false;  // training images: mirror half of them
  Options options{"data"};       // the keys a registered dataset declares
};

struct OptimizerConfig {
  std::string type = "sgd";  // sgd | adam | adamw | rmsprop
  double lr = 0.05;
  double momentum = 0.9;
  double dampening = 0.0;
  bool nesterov = false;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double alpha = 0.99;                // rmsprop smoothing
  double clip_grad_norm = 0;          // 0: no clipping
  std::vector<std::string> no_decay;  // parameters without weight decay: bias, norm, embedding, ...
};

struct ScheduleConfig {
  std::string type = "cosine";  // constant | step | multistep | cosine
  int64_t warmup_steps = 0;
  double warmup_start_factor = 0.0;
  bool scale_lr_with_replicas = false;
  int64_t step_size = 1000;  // step: steps between decays
  double gamma = 0.1;        // step, multistep: decay factor
  std::vector<int64_t> milestones = {};
  double eta_min = 0.0;  // cosine: final learning rate
};

struct TrainSection {
  int64_t epochs = 10;
  int64_t max_steps = 0;  // 0: epochs decide
  int64_t batch_size = 64;
  int64_t grad_accum_steps = 1;
  int64_t seed = 0;
  double label_smoothing = 0.0;
  bool drop_last = true;
  std::string checkpoint_dir;  // "": checkpoints/<run id>
  int64_t checkpoint_every_steps = 500;
  int64_t keep_checkpoints = 3;
  std::string resume = "auto";      // auto | never | <checkpoint path>
  std::string init_from;            // safetensors weights to start a fresh run from ("": none)
  int64_t stop_at_step = 0;         // stop (with a checkpoint) after this step, as if preempted
  int64_t threads = 0;              // kernel threads; 0: all cores
  std::string device = "cpu";       // cpu | cuda | auto (cuda when a GPU is present)
  std::string precision = "fp32";   // fp32 | bf16 | fp16: matmul/conv operands (autocast)
  double loss_scale = 65536;        // fp16: the dynamic loss scale to start from
  int64_t early_stop_patience = 0;  // evaluations without improvement; 0: off
  std::string early_stop_metric = "accuracy";  // accuracy | loss
  std::string on_nonfinite = "stop";           // stop | skip_step
  bool detect_anomaly = false;       // backward checks every gradient, naming the op of a NaN/Inf
  bool checkpoint_on_signal = true;  // SIGTERM/SIGUSR1: checkpoint at an agreed step, then exit
};

/// The `launcher` section; launch::LaunchOptions extends it with what the command line adds.
struct LauncherConfig {
  int64_t nproc_per_node = 1;
  int64_t nnodes = 1;
  std::string rdzv_endpoint;  // host:port of node 0's Store; "" on one node: a free loopback port
  int64_t max_restarts = 0;
  double heartbeat_timeout_s = 60;
  double stop_grace_s = 10;
  double rdzv_timeout_s = 300;
  std::string log_dir;  // "" prefixes worker output with [rank N] instead of writing files
  std::string cpu_bind = "auto";  // auto: each worker on its own cores when there are enough; none
};

/// The job's layout when no launcher, mpirun or srun gives it: every process is started with the
/// same config and its own `cluster.rank`; rank 0 hosts the Store at `cluster.store`.
struct ClusterConfig {
  int64_t world_size = 0;  // 0: the layout comes from the environment
  int64_t rank = -1;       // this process; per process, so left out of the config hash
  std::string store;       // host:port
};

struct LogConfig {
  std::string dir;  // "": runs/<run id>
  int64_t every_steps = 50;
  bool tensorboard = true;
  std::string progress = "auto";  // auto | bar | lines | off
  bool trace = false;             // <dir>/trace.json: a Chrome trace of a window of steps
  int64_t trace_steps = 20;       // steps in the trace window
  int64_t trace_first_step = 0;   // its first step; 0: the run's first step
  bool stragglers = true;         // the per-replica straggler table every every_steps
};

struct Config {
  ModelConfig model;
  DataConfig data;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  TrainSection train;
  StrategyOptions strategy;
  LauncherConfig launcher;
  ClusterConfig cluster;
  LogConfig log;
  std::string source;  // file it came from ("" for defaults)

  /// The resolved configuration as YAML (every key, sections in schema order); without the keys
  /// that differ between the processes of one job (cluster.rank) when `per_process` is false.
  std::string to_yaml(bool per_process = true) const;
  /// The same as ("section.key", value) pairs in schema order: what replicas compare at start-up.
  ConfigEntries entries(bool per_process = true) const;
  /// FNV-1a hash of to_yaml(false), hex: the processes of one job get equal hashes.
  std::string hash() const;
  /// "<config file stem>-<8 hex digits>": names the default checkpoint and log directories. The
  /// digits hash what makes a run (model, data, optimizer, schedule, train.seed), so a re-run of
  /// the same config resumes, and a run with other settings gets directories of its own.
  std::string run_id() const;
  /// Fills an empty train.checkpoint_dir with checkpoints/<run id> and log.dir with runs/<run id>.
  void resolve_run_dirs();
};

/// A config problem: file, line (0 when unknown), key and message; the CLI exits with 2.
class ConfigError : public Error {
 public:
  ConfigError(const std::string& msg, const char* file, int line) : Error(msg, file, line) {}
  /// Every problem found, one line each ("configs/x.yaml:7: train.batch_size: ...").
  std::vector<std::string> problems;
};

/// Reads `path` and applies `overrides` ("section.key=value", YAML values), validating every key,
/// type and range against the schema. Throws ConfigError listing every problem found.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
/// Parses YAML text as if it came from `source_name` (for tests and checkpoints).
Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});

/// " (did you mean 'x'?)" for the candidate closest to `word` within a few edits, else "".
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

/// The reference of every key (section, key, type, default, allowed values, meaning) as Markdown:
/// docs/config.md is this text.
std::string config_reference_markdown();
/// "section.key" of every key in the schema.
std::vector<std::string> config_keys();

}  // namespace dtrain::train
