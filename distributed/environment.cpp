// Environment detection for workers started by dtrain's launcher, mpirun or srun.
#include "dtrain/distributed/environment.h"

#include <climits>
#include <optional>
#include <sstream>
#include <vector>

#include "dtrain/tensor/check.h"

namespace dtrain::dist {
namespace {

using Getenv = std::function<const char*(const char*)>;

std::optional<std::string> lookup(const Getenv& getenv, const char* name) {
  const char* value = getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

/// Strict: digits only (no sign, spaces or suffix), and it fits an int.
int parse_count(const std::string& value, const char* name) {
  bool ok = !value.empty() && value.size() <= 10;
  long long n = 0;
  for (char ch : value) {
    ok = ok && ch >= '0' && ch <= '9';
    if (ok) n = n * 10 + (ch - '0');
  }
  if (!ok || n > INT_MAX) {
    DTRAIN_THROW(ValueError, "environment: ", name, "='", value,
                 "' is not a non-negative integer (rank and size variables hold whole numbers "
                 "such as 0 or 4)");
  }
  return static_cast<int>(n);
}

std::optional<int> read_int(const Getenv& getenv, const char* name) {
  auto value = lookup(getenv, name);
  if (!value) return std::nullopt;
  return parse_count(*value, name);
}

int require_int(const Getenv& getenv, const char* name, const char* because) {
  auto value = read_int(getenv, name);
  if (!value) {
    DTRAIN_THROW(ValueError, "environment: ", because, " is set but ", name,
                 " is not; the launcher must set both");
  }
  return *value;
}

/// Slurm's compressed per-node task counts, e.g. "2(x3),1" = 2, 2, 2, 1: entry `node`.
std::optional<int> tasks_on_node(const std::string& spec, int node, const char* name) {
  std::vector<int> counts;
  std::istringstream is(spec);
  std::string item;
  while (std::getline(is, item, ',')) {
    int repeat = 1;
    const size_t paren = item.find("(x");
    if (paren != std::string::npos) {
      if (item.back() != ')') {
        DTRAIN_THROW(ValueError, "environment: ", name, "='", spec, "' has a malformed entry '",
                     item, "' (expected N or N(xR))");
      }
      repeat = parse_count(item.substr(paren + 2, item.size() - paren - 3), name);
      item = item.substr(0, paren);
    }
    const int count = parse_count(item, name);
    for (int i = 0; i < repeat && static_cast<int>(counts.size()) <= node; ++i) {
      counts.push_back(count);
    }
  }
  if (node < static_cast<int>(counts.size())) return counts[node];
  return std::nullopt;
}

struct LocalSize {
  std::optional<int> value;
  const char* name = "SLURM_STEP_TASKS_PER_NODE";
};

/// Tasks of this job step on this node. The step's own count comes first: a batch job's
/// --ntasks-per-node is inherited by an `srun -n` step that may run fewer.
LocalSize slurm_local_size(const Getenv& getenv) {
  const int node = read_int(getenv, "SLURM_NODEID").value_or(0);
  if (auto spec = lookup(getenv, "SLURM_STEP_TASKS_PER_NODE")) {
    return {tasks_on_node(*spec, node, "SLURM_STEP_TASKS_PER_NODE"), "SLURM_STEP_TASKS_PER_NODE"};
  }
  if (auto n = read_int(getenv, "SLURM_NTASKS_PER_NODE")) return {n, "SLURM_NTASKS_PER_NODE"};
  if (auto spec = lookup(getenv, "SLURM_TASKS_PER_NODE")) {
    return {tasks_on_node(*spec, node, "SLURM_TASKS_PER_NODE"), "SLURM_TASKS_PER_NODE"};
  }
  return {};
}

void check_below(int value, const char* value_name, int bound, const char* bound_name) {
  if (value >= bound) {
    DTRAIN_THROW(ValueError, "environment: ", value_name, "=", value, " is not below ", bound_name,
                 "=", bound, "; ranks count from 0 to size - 1");
  }
}

void check_positive(int value, const char* name) {
  if (value < 1) DTRAIN_THROW(ValueError, "environment: ", name, "=", value, " must be at least 1");
}

/// Fills and validates one source. Missing local values default to the global ones (one machine).
WorldInfo make(std::string source, int rank, const char* rank_name, int size, const char* size_name,
               std::optional<int> local_rank, const char* local_rank_name,
               std::optional<int> local_size, const char* local_size_name) {
  check_positive(size, size_name);
  check_below(rank, rank_name, size, size_name);
  WorldInfo w;
  w.source = std::move(source);
  w.rank = rank;
  w.size = size;
  w.local_rank = local_rank.value_or(rank);
  w.local_size = local_size.value_or(size);
  check_positive(w.local_size, local_size_name);
  check_below(w.local_rank, local_rank_name, w.local_size, local_size_name);
  if (w.local_size > w.size) {
    DTRAIN_THROW(ValueError, "environment: ", local_size_name, "=", w.local_size,
                 " is larger than ", size_name, "=", w.size);
  }
  return w;
}

}  // namespace

std::string WorldInfo::describe() const {
  std::ostringstream os;
  os << "rank " << rank << " of " << size << " (local " << local_rank << " of " << local_size
     << ", from " << source << ")";
  return os.str();
}

WorldInfo detect_world(const Getenv& getenv) {
  if (auto rank = read_int(getenv, "DTRAIN_RANK")) {
    return make("dtrain", *rank, "DTRAIN_RANK",
                require_int(getenv, "DTRAIN_WORLD_SIZE", "DTRAIN_RANK"), "DTRAIN_WORLD_SIZE",
                read_int(getenv, "DTRAIN_LOCAL_RANK"), "DTRAIN_LOCAL_RANK",
                read_int(getenv, "DTRAIN_LOCAL_WORLD_SIZE"), "DTRAIN_LOCAL_WORLD_SIZE");
  }
  if (auto rank = read_int(getenv, "OMPI_COMM_WORLD_RANK")) {
    return make("openmpi", *rank, "OMPI_COMM_WORLD_RANK",
                require_int(getenv, "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
                "OMPI_COMM_WORLD_SIZE", read_int(getenv, "OMPI_COMM_WORLD_LOCAL_RANK"),
                "OMPI_COMM_WORLD_LOCAL_RANK", read_int(getenv, "OMPI_COMM_WORLD_LOCAL_SIZE"),
                "OMPI_COMM_WORLD_LOCAL_SIZE");
  }
  if (auto rank = read_int(getenv, "PMIX_RANK")) {
    const LocalSize local = slurm_local_size(getenv);
    return make("pmix", *rank, "PMIX_RANK", require_int(getenv, "SLURM_NTASKS", "PMIX_RANK"),
                "SLURM_NTASKS", read_int(getenv, "SLURM_LOCALID"), "SLURM_LOCALID", local.value,
                local.name);
  }
  if (auto rank = read_int(getenv, "SLURM_PROCID")) {
    const LocalSize local = slurm_local_size(getenv);
    return make("slurm", *rank, "SLURM_PROCID", require_int(getenv, "SLURM_NTASKS", "SLURM_PROCID"),
                "SLURM_NTASKS", read_int(getenv, "SLURM_LOCALID"), "SLURM_LOCALID", local.value,
                local.name);
  }
  return WorldInfo{};
}

JobSpec job_spec_from_env(const Getenv& getenv) {
  JobSpec spec;
  spec.world = detect_world(getenv);
  spec.store_address = lookup(getenv, "DTRAIN_STORE_ADDR").value_or("");
  spec.store_token = lookup(getenv, "DTRAIN_STORE_TOKEN").value_or("");
  spec.restart_count = read_int(getenv, "DTRAIN_RESTART_COUNT").value_or(0);
  return spec;
}

}  // namespace dtrain::dist
