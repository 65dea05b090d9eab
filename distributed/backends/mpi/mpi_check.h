// DTRAIN_MPI_CHECK: turns an MPI error code into a dtrain::DistError naming the call and MPI's own
// description. Includes mpi.h, so only code of the mpi backend (and MPI tests) includes it.
#pragma once

#include <mpi.h>

#include <string>

#include "dtrain/tensor/check.h"

namespace dtrain::dist::detail {

/// MPI_Error_string for `code`, or the bare number when MPI cannot decode it.
inline std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS)
    return "MPI error " + std::to_string(code);
  return std::string(text, length);
}

}  // namespace dtrain::dist::detail

/// Throws dtrain::DistError naming the expression and MPI's description of the error when it
/// does not return MPI_SUCCESS; optional trailing arguments are streamed in front as context
/// (`DTRAIN_MPI_CHECK(MPI_Ibcast(...), info.describe(), " on rank ", rank)`). The communicator
/// must return errors (MPI_ERRORS_RETURN) for this to see them: MPI's default handler aborts the
/// job first.
#define DTRAIN_MPI_CHECK(expr, ...)                                                        \
  do {                                                                                     \
    const int dtrain_mpi_rc_ = (expr);                                                     \
    if (dtrain_mpi_rc_ != MPI_SUCCESS) {                                                   \
      DTRAIN_THROW(::dtrain::DistError, __VA_OPT__(__VA_ARGS__, ": ", ) #expr " failed: ", \
                   ::dtrain::dist::detail::mpi_error_string(dtrain_mpi_rc_));              \
    }                                                                                      \
  } while (0)
