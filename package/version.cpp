#include "dtrain/version.h"

namespace dtrain {

const char* library_version() { return kVersion; }

}  // namespace dtrain
