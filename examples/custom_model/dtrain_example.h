// What this project uses of dtrain.
#pragma once

#include "dtrain/launcher/cli.h"
#include "dtrain/nn/layers.h"
#include "dtrain/train/registry.h"
