// The backend registry. Explicit on purpose: a static library drops self-registering objects
// that nothing references, so each backend is one line here instead.
#include "distributed/registry.h"

#include <sstream>

#include "distributed/backends/local/local_communicator.h"
#include "distributed/environment.h"
#include "tensor/check.h"

#ifdef DTRAIN_HAS_MPI
#include "distributed/backends/mpi/mpi_communicator.h"
#endif

namespace dtrain::dist {
namespace {

std::string joined(const std::vector<std::string>& names) {
  std::ostringstream os;
  for (size_t i = 0; i < names.size(); ++i) os << (i ? ", " : "") << names[i];
  return os.str();
}

}  // namespace

std::vector<std::string> available_backends() {
  std::vector<std::string> names = {"local"};
#ifdef DTRAIN_HAS_MPI
  names.push_back("mpi");
#endif
  return names;
}

std::shared_ptr<AsyncCommunicator> create_world_communicator(std::string_view backend) {
  if (backend == "local") {
    DTRAIN_THROW(UnsupportedError,
                 "backend 'local' runs its ranks as threads of one process and has no world of "
                 "processes to join; create its communicators with make_local_group(size)");
  }
#ifdef DTRAIN_HAS_MPI
  if (backend == "mpi") return MpiCommunicator::world();
#endif
  DTRAIN_THROW(
      UnsupportedError, "communicator backend '", backend,
      "' is not available in this build; available: ", joined(available_backends()),
      backend == "mpi" ? " (rebuild with MPI: install libopenmpi-dev, -DDTRAIN_MPI=ON)" : "");
}

std::shared_ptr<AsyncCommunicator> init_from_env(std::string_view backend) {
  const WorldInfo world = detect_world();
  if (world.size == 1 && (backend == "auto" || backend == "local")) return make_local_group(1)[0];
  std::string chosen(backend);
  if (backend == "auto") {
    if (world.source == "dtrain") {
      DTRAIN_THROW(UnsupportedError, "init_from_env: ", world.describe(),
                   " comes from dtrain's launcher, which has no data backend of its own yet; "
                   "start the job with mpirun or srun --mpi=pmix");
    }
    chosen = "mpi";
  }
  std::shared_ptr<AsyncCommunicator> comm = create_world_communicator(chosen);
  if (comm->rank() != world.rank || comm->size() != world.size) {
    DTRAIN_THROW(ValueError, "init_from_env: the environment says ", world.describe(), " but the ",
                 chosen, " backend has rank ", comm->rank(), " of ", comm->size(),
                 "; check the launcher's environment variables");
  }
  return comm;
}

}  // namespace dtrain::dist
