// Everything a training program uses, in one include: tensors and their ops, autograd, modules,
// losses, optimisers and schedules, datasets and the loader, communicators, the strategies (DDP,
// mirrored), the Trainer with its config, checkpoints and exports, and the command line
// (cli_main) for programs that register their own models and datasets.
#pragma once

#include "dtrain/version.h"

#include "dtrain/tensor/dtype.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/printable.h"
#include "dtrain/tensor/tensor.h"

#include "dtrain/autograd/engine.h"
#include "dtrain/autograd/functions.h"
#include "dtrain/autograd/grad_mode.h"
#include "dtrain/autograd/gradcheck.h"
#include "dtrain/autograd/hooks.h"

#include "dtrain/nn/attention.h"
#include "dtrain/nn/clip_grad.h"
#include "dtrain/nn/functional.h"
#include "dtrain/nn/init.h"
#include "dtrain/nn/layers.h"
#include "dtrain/nn/loss.h"
#include "dtrain/nn/lr_scheduler.h"
#include "dtrain/nn/module.h"
#include "dtrain/nn/optim.h"

#include "dtrain/data/augment.h"
#include "dtrain/data/cifar.h"
#include "dtrain/data/dataset.h"
#include "dtrain/data/distributed_dataset.h"
#include "dtrain/data/idx.h"
#include "dtrain/data/loader.h"
#include "dtrain/data/npy.h"
#include "dtrain/data/range_dataset.h"
#include "dtrain/data/sampler.h"
#include "dtrain/data/synthetic.h"
#include "dtrain/data/token_stream.h"

#include "dtrain/distributed/communicator.h"
#include "dtrain/distributed/environment.h"
#include "dtrain/distributed/job.h"
#include "dtrain/distributed/registry.h"
#include "dtrain/distributed/store.h"

#include "dtrain/strategies/ddp.h"
#include "dtrain/strategies/mirrored.h"
#include "dtrain/strategies/strategy.h"

#include "dtrain/train/checkpoint.h"
#include "dtrain/train/config.h"
#include "dtrain/train/registry.h"
#include "dtrain/train/safetensors.h"
#include "dtrain/train/trainer.h"

#include "dtrain/launcher/cli.h"
