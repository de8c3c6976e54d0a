// stan_bridge shim: a small C interface around any Stan program.
//
// This file is compiled on its own, once per toolchain and set of flags, into
// stan_bridge_shim.o, after stan_bridge_pch.hpp (the Stan headers, precompiled;
// passed with -include). A program's library is
//
//   model.o (stanc's C++ for the program, compiled with CmdStan's own flags
//            plus -fPIC; the same object goes into CmdStan's executable)
//   + stan_bridge_shim.o
//
// linked into a shared library that Python loads with ctypes. The shim knows
// nothing about the program: it makes the model with the factory `new_model`
// that stanc generates in every model.hpp, and calls it only through the
// virtual `stan::model::model_base` interface (log_prob and its propto /
// jacobian variants for double and var vectors, write_array,
// transform_inits, names and dims). That is how BridgeStan works too, and the
// same file works with the Stan in CmdStan 2.27 and with the newer Stan inside
// the httpstan wheel.
//
// Conventions of the C interface:
// * Every call that can fail returns an int status: 0 ok, 1 the model
//   rejected the point (std::domain_error: Stan treats these as a zero
//   density), 2 any other error. On a non-zero status `*err` receives a
//   malloc'd message that the caller frees with sb_free_string.
// * Arrays are C-contiguous doubles; a batch of n points is (n, dim).
// * Constrained values are in Stan's write_array order (each variable
//   flattened column-major, as in CmdStan's CSV columns).

#include "stan_bridge_pch.hpp"

// Defined by stanc's code for the program (model.o), declared here as CmdStan's
// command.hpp declares it.
stan::model::model_base& new_model(stan::io::var_context& data_context, unsigned int seed,
                                   std::ostream* msg_stream);

#define SB_API extern "C" __attribute__((visibility("default")))

namespace stan_bridge_shim {

static const int SB_OK = 0;
static const int SB_REJECT = 1;
static const int SB_ERROR = 2;

inline void set_error(char** err, const std::string& msg) {
  if (err != nullptr) {
    *err = static_cast<char*>(std::malloc(msg.size() + 1));
    if (*err != nullptr) {
      std::memcpy(*err, msg.c_str(), msg.size() + 1);
    }
  }
}

// With STAN_THREADS the autodiff tape is thread local. A thread that Python
// starts (a thread pool, say) has none until one is made; this makes one
// per thread, once.
inline void ensure_ad_stack() {
  static thread_local stan::math::ChainableStack thread_tape;
  (void)thread_tape;
}

// Run f(), mapping exceptions to the status convention above.
template <typename F>
inline int guarded(char** err, F&& f) {
  try {
    f();
    return SB_OK;
  } catch (const std::domain_error& e) {
    set_error(err, e.what());
    return SB_REJECT;
  } catch (const std::exception& e) {
    set_error(err, e.what());
    return SB_ERROR;
  } catch (...) {
    set_error(err, "unknown C++ exception");
    return SB_ERROR;
  }
}

inline std::string json_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

inline void json_names(std::ostringstream& os, const std::vector<std::string>& v) {
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) {
    os << (i ? "," : "") << "\"" << json_escape(v[i]) << "\"";
  }
  os << "]";
}

// Unpack the (names, values, ndims, dims) arrays that Python sends into
// the vectors array_var_context wants.
template <typename T>
inline void unpack_vars(int n, const char** names, const T* vals, const int* ndims,
                        const int64_t* dims, std::vector<std::string>& names_out,
                        std::vector<T>& vals_out,
                        std::vector<std::vector<size_t>>& dims_out) {
  size_t pos_dim = 0;
  size_t total = 0;
  for (int k = 0; k < n; ++k) {
    names_out.emplace_back(names[k]);
    std::vector<size_t> d;
    size_t size = 1;
    for (int j = 0; j < ndims[k]; ++j) {
      d.push_back(static_cast<size_t>(dims[pos_dim + j]));
      size *= static_cast<size_t>(dims[pos_dim + j]);
    }
    pos_dim += ndims[k];
    total += size;
    dims_out.push_back(d);
  }
  vals_out.assign(vals, vals + total);
}

struct Model {
  stan::model::model_base* model;
  size_t dim;                                    // unconstrained size
  size_t n_params;                               // constrained scalars, parameters
  size_t n_params_tp;                            // ... plus transformed parameters
  size_t n_params_all;                           // ... plus generated quantities
};

template <bool propto, bool jacobian>
inline double log_density(const Model& m, const double* theta) {
  Eigen::VectorXd params = Eigen::Map<const Eigen::VectorXd>(theta, m.dim);
  if (propto) {
    // Dropping constants needs autodiff types: with doubles Stan drops
    // every term.
    ensure_ad_stack();
    Eigen::Matrix<stan::math::var, -1, 1> p_var(m.dim);
    for (size_t i = 0; i < m.dim; ++i) {
      p_var(i) = params(i);
    }
    double lp;
    try {
      lp = m.model->template log_prob<propto, jacobian>(p_var, nullptr).val();
    } catch (...) {
      stan::math::recover_memory();
      throw;
    }
    stan::math::recover_memory();
    return lp;
  }
  return m.model->template log_prob<propto, jacobian>(params, nullptr);
}

template <bool propto, bool jacobian>
inline double log_density_gradient(const Model& m, const double* theta, double* grad) {
  ensure_ad_stack();
  Eigen::Matrix<stan::math::var, -1, 1> p_var(m.dim);
  for (size_t i = 0; i < m.dim; ++i) {
    p_var(i) = theta[i];
  }
  double lp;
  try {
    stan::math::var lp_var = m.model->template log_prob<propto, jacobian>(p_var, nullptr);
    lp_var.grad();
    lp = lp_var.val();
    for (size_t i = 0; i < m.dim; ++i) {
      grad[i] = p_var(i).adj();
    }
  } catch (...) {
    stan::math::recover_memory();
    throw;
  }
  stan::math::recover_memory();
  return lp;
}

inline double dispatch_log_density(const Model& m, int propto, int jacobian,
                                   const double* theta) {
  if (propto) {
    return jacobian ? log_density<true, true>(m, theta) : log_density<true, false>(m, theta);
  }
  return jacobian ? log_density<false, true>(m, theta) : log_density<false, false>(m, theta);
}

inline double dispatch_gradient(const Model& m, int propto, int jacobian, const double* theta,
                                double* grad) {
  if (propto) {
    return jacobian ? log_density_gradient<true, true>(m, theta, grad)
                    : log_density_gradient<true, false>(m, theta, grad);
  }
  return jacobian ? log_density_gradient<false, true>(m, theta, grad)
                  : log_density_gradient<false, false>(m, theta, grad);
}

// Run row(i) for i in [0, n). A row that Stan rejects gets on_reject(i) and
// is counted in *n_rejected (the first such message goes to *err); any other
// error stops the loop and its message replaces *err.
template <typename Row, typename OnReject>
inline int batch_rows(int64_t n, int64_t* n_rejected, char** err, Row&& row,
                      OnReject&& on_reject) {
  *n_rejected = 0;
  for (int64_t i = 0; i < n; ++i) {
    char* row_err = nullptr;
    int status = guarded(&row_err, [&]() { row(i); });
    if (status == SB_OK) {
      continue;
    }
    if (status == SB_REJECT) {
      on_reject(i);
      if (*n_rejected == 0 && err != nullptr) {
        *err = row_err;
      } else {
        std::free(row_err);
      }
      ++*n_rejected;
      continue;
    }
    if (err != nullptr && *err != nullptr) {
      std::free(*err);
    }
    if (err != nullptr) {
      *err = row_err;
    } else {
      std::free(row_err);
    }
    return status;
  }
  return SB_OK;
}

}  // namespace stan_bridge_shim

using stan_bridge_shim::Model;

// Version of this C interface; the Python side checks it.
SB_API int sb_shim_version() { return 1; }

SB_API void sb_free_string(char* s) { std::free(s); }

SB_API Model* sb_new(int n_r, const char** names_r, const double* vals_r, const int* ndims_r,
                     const int64_t* dims_r, int n_i, const char** names_i, const int* vals_i,
                     const int* ndims_i, const int64_t* dims_i, unsigned int seed, char** err) {
  Model* out = nullptr;
  int status = stan_bridge_shim::guarded(err, [&]() {
    std::vector<std::string> nr, ni;
    std::vector<double> vr;
    std::vector<int> vi;
    std::vector<std::vector<size_t>> dr, di;
    stan_bridge_shim::unpack_vars(n_r, names_r, vals_r, ndims_r, dims_r, nr, vr, dr);
    stan_bridge_shim::unpack_vars(n_i, names_i, vals_i, ndims_i, dims_i, ni, vi, di);
    stan::io::array_var_context data(nr, vr, dr, ni, vi, di);
    std::ostringstream msgs;
    stan_bridge_shim::ensure_ad_stack();
    stan::model::model_base* model = &new_model(data, seed, &msgs);
    out = new Model();
    out->model = model;
    std::vector<std::string> c_names;
    model->constrained_param_names(c_names, false, false);
    out->n_params = c_names.size();
    c_names.clear();
    model->constrained_param_names(c_names, true, false);
    out->n_params_tp = c_names.size();
    c_names.clear();
    model->constrained_param_names(c_names, true, true);
    out->n_params_all = c_names.size();
    out->dim = model->num_params_r();
  });
  if (status != stan_bridge_shim::SB_OK) {
    return nullptr;
  }
  return out;
}

SB_API void sb_free(Model* m) {
  if (m != nullptr) {
    delete m->model;
    delete m;
  }
}

// JSON with the model's name, sizes, variable names and dims. The caller
// frees the string with sb_free_string.
SB_API char* sb_info(Model* m) {
  std::ostringstream os;
  std::vector<std::string> names;
  std::vector<std::vector<size_t>> dims;
  m->model->get_param_names(names);
  m->model->get_dims(dims);
  std::vector<std::string> c_names, u_names;
  m->model->constrained_param_names(c_names, true, true);
  m->model->unconstrained_param_names(u_names, false, false);
  os << "{\"model_name\":\"" << stan_bridge_shim::json_escape(m->model->model_name()) << "\",";
  os << "\"dim\":" << m->dim << ",";
  os << "\"n_params\":" << m->n_params << ",";
  os << "\"n_params_tp\":" << m->n_params_tp << ",";
  os << "\"n_params_all\":" << m->n_params_all << ",";
  os << "\"names\":";
  stan_bridge_shim::json_names(os, names);
  os << ",\"dims\":[";
  for (size_t i = 0; i < dims.size(); ++i) {
    os << (i ? "," : "") << "[";
    for (size_t j = 0; j < dims[i].size(); ++j) {
      os << (j ? "," : "") << dims[i][j];
    }
    os << "]";
  }
  os << "],\"constrained_names\":";
  stan_bridge_shim::json_names(os, c_names);
  os << ",\"unconstrained_names\":";
  stan_bridge_shim::json_names(os, u_names);
  os << ",\"compile_info\":";
  stan_bridge_shim::json_names(os, m->model->model_compile_info());
  os << "}";
  std::string s = os.str();
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

SB_API int sb_log_density(Model* m, int propto, int jacobian, const double* theta, double* lp,
                          char** err) {
  return stan_bridge_shim::guarded(err, [&]() {
    *lp = stan_bridge_shim::dispatch_log_density(*m, propto, jacobian, theta);
  });
}

SB_API int sb_log_density_gradient(Model* m, int propto, int jacobian, const double* theta,
                                   double* lp, double* grad, char** err) {
  return stan_bridge_shim::guarded(err, [&]() {
    *lp = stan_bridge_shim::dispatch_gradient(*m, propto, jacobian, theta, grad);
  });
}

// Batched versions: a rejected row gets lp = -inf (and a NaN gradient);
// only other errors stop the loop. `n_rejected` counts rejected rows and
// `err` holds the first rejection message.
SB_API int sb_log_density_batch(Model* m, int propto, int jacobian, int64_t n, const double* X,
                                double* lp, int64_t* n_rejected, char** err) {
  return stan_bridge_shim::batch_rows(
      n, n_rejected, err,
      [&](int64_t i) {
        lp[i] = stan_bridge_shim::dispatch_log_density(*m, propto, jacobian, X + i * m->dim);
      },
      [&](int64_t i) { lp[i] = -std::numeric_limits<double>::infinity(); });
}

SB_API int sb_log_density_gradient_batch(Model* m, int propto, int jacobian, int64_t n,
                                         const double* X, double* lp, double* grad,
                                         int64_t* n_rejected, char** err) {
  const size_t d = m->dim;
  return stan_bridge_shim::batch_rows(
      n, n_rejected, err,
      [&](int64_t i) {
        lp[i] = stan_bridge_shim::dispatch_gradient(*m, propto, jacobian, X + i * d, grad + i * d);
      },
      [&](int64_t i) {
        lp[i] = -std::numeric_limits<double>::infinity();
        for (size_t j = 0; j < d; ++j) {
          grad[i * d + j] = std::numeric_limits<double>::quiet_NaN();
        }
      });
}

// Constrain n unconstrained points (n, dim) into out (n, width) where width
// is n_params, n_params_tp or n_params_all by the flags. Generated
// quantities draw from one RNG seeded with (seed, chain), advanced across
// the rows, so a batch is reproducible from its seed.
SB_API int sb_param_constrain(Model* m, int include_tp, int include_gq, int64_t n,
                              const double* X, double* out, unsigned int seed,
                              unsigned int chain, char** err) {
  return stan_bridge_shim::guarded(err, [&]() {
    auto rng = stan::services::util::create_rng(seed, chain);
    const size_t width
        = include_gq ? m->n_params_all : (include_tp ? m->n_params_tp : m->n_params);
    Eigen::VectorXd params(m->dim);
    Eigen::VectorXd vars;
    for (int64_t i = 0; i < n; ++i) {
      params = Eigen::Map<const Eigen::VectorXd>(X + i * m->dim, m->dim);
      m->model->write_array(rng, params, vars, include_tp != 0, include_gq != 0, nullptr);
      if (static_cast<size_t>(vars.size()) != width) {
        throw std::runtime_error("write_array returned " + std::to_string(vars.size())
                                 + " values; expected " + std::to_string(width));
      }
      std::memcpy(out + i * width, vars.data(), width * sizeof(double));
    }
  });
}

// Unconstrain one point given as (names, values, ndims, dims) of the
// parameters, values flattened column-major as in sb_new.
SB_API int sb_param_unconstrain(Model* m, int n_vars, const char** names, const double* vals,
                                const int* ndims, const int64_t* dims, double* out,
                                char** err) {
  return stan_bridge_shim::guarded(err, [&]() {
    std::vector<std::string> nr;
    std::vector<double> vr;
    std::vector<std::vector<size_t>> dr;
    stan_bridge_shim::unpack_vars(n_vars, names, vals, ndims, dims, nr, vr, dr);
    stan::io::array_var_context context(nr, vr, dr);
    Eigen::VectorXd params(m->dim);
    m->model->transform_inits(context, params, nullptr);
    if (static_cast<size_t>(params.size()) != m->dim) {
      throw std::runtime_error("transform_inits returned the wrong size");
    }
    std::memcpy(out, params.data(), m->dim * sizeof(double));
  });
}
