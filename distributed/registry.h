// The backend registry: which communicator backends this build has, whether one can run on this
// machine, and how to create one by name. One explicit line per backend in registry.cpp.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dtrain/distributed/environment.h"
#include "dtrain/distributed/host_communicator.h"
#include "dtrain/distributed/store.h"

namespace dtrain::dist {

/// The backends compiled into this build, in a fixed order: "local" and "tcp" always, then "mpi"
/// and "nccl" when built with them.
std::vector<std::string> available_backends();

/// Every backend dtrain has, whether this build has it or not: "local", "tcp", "mpi", "nccl".
/// The config's strategy.backend documents these and "auto", so the reference is the same for
/// every build; one this build lacks is refused with backend_unavailable_reason.
std::vector<std::string> known_backends();

/// Whether this build has `backend` (one of available_backends()).
bool built_with(std::string_view backend);

/// "" when `backend` can run on this machine; otherwise why not: not in this build (with how to
/// get it), or no usable device (with the driver's reason).
std::string backend_unavailable_reason(std::string_view backend);

/// Whether `backend` carries device (GPU) tensors and needs a host backend beside it for host
/// tensors ("nccl").
bool is_device_backend(std::string_view backend);

/// A communicator over every process of the job `spec` describes, for a host backend ("tcp",
/// which finds its peers through the job's Store `store`; "mpi"). Collective: every rank calls it
/// the same number of times in the same order. Throws UnsupportedError for "local" (its ranks are
/// threads: use make_local_group), for a device backend, and for a backend this build does not
/// have, listing the available ones.
std::shared_ptr<HostCommunicator> create_world_communicator(std::string_view backend,
                                                            const JobSpec& spec,
                                                            std::shared_ptr<StoreClient> store);

/// A device backend's communicator over the ranks of `host`, on cuda:`device` of this process
/// (the backend's id travels through `host`). Collective over `host`; a rank whose peers have not
/// all joined within `init_timeout` gives up with TimeoutError.
CommunicatorPtr create_device_communicator(std::string_view backend, Communicator& host, int device,
                                           Timeout init_timeout = kDefaultTimeout);

/// The GPU for one process per GPU: cuda:<local rank>, on a machine with `gpus` usable GPUs.
/// Throws UnsupportedError without GPUs, and ValueError naming the local ranks left without a GPU
/// of their own when the machine runs more local ranks than it has GPUs (NCCL would refuse the
/// shared GPU only after the host communicator is up, or hang).
Device device_for_local_rank(const WorldInfo& world, int gpus);

/// A device backend's communicators for threads of one process, one per GPU in `devices`.
std::vector<CommunicatorPtr> create_local_device_communicators(std::string_view backend,
                                                               const std::vector<int>& devices);

}  // namespace dtrain::dist
