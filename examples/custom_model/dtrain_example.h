// What this project uses of dtrain.
#pragma once

#include "launcher/cli.h"
#include "nn/layers.h"
#include "train/registry.h"
