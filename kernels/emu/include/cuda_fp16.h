// Stands in for the CUDA toolkit header under the kernel emulator (../cuda_emu.h).
#pragma once
#include "../cuda_emu.h"
