// Headers every stan_bridge model library needs. Precompiled once per
// toolchain (stan_bridge_pch.hpp.gch in the build cache), so that compiling
// a model only compiles the model's own code.
#ifndef STAN_BRIDGE_PCH_HPP
#define STAN_BRIDGE_PCH_HPP
#include <stan/model/model_header.hpp>
#include <stan/io/array_var_context.hpp>
#include <stan/services/util/create_rng.hpp>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>
#endif
