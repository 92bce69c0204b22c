// Run-time selection of the compact kernel variant (compiled without ISA flags).
#include <cstdlib>
#include <cstring>

#include "compact.h"

namespace rankscope::compact {

#define RS_DECLARE_VARIANT(ns)                                         \
  namespace ns {                                                       \
  void gram_accumulate(const double* X, int k, int r, double* G);      \
  void tridiagonalize(double* G, int k, double* d, double* e);         \
  unsigned tridiag_eigvals(double* d, double* e, int k);               \
  }
RS_DECLARE_VARIANT(avx512)
RS_DECLARE_VARIANT(avx2)
RS_DECLARE_VARIANT(generic)
#undef RS_DECLARE_VARIANT

namespace {

struct Variant {
  const char* name;
  void (*gram)(const double*, int, int, double*);
  void (*tridiag)(double*, int, double*, double*);
  unsigned (*eigvals)(double*, double*, int);
};

Variant choose() {
  const Variant variants[] = {
      {"generic", generic::gram_accumulate, generic::tridiagonalize, generic::tridiag_eigvals},
      {"avx2", avx2::gram_accumulate, avx2::tridiagonalize, avx2::tridiag_eigvals},
      {"avx512", avx512::gram_accumulate, avx512::tridiagonalize, avx512::tridiag_eigvals},
  };
  int best = 0;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = 1;
  if (best == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    best = 2;
#endif
  if (const char* want = std::getenv("RANKSCOPE_ISA")) {
    for (int v = 0; v < best; ++v)
      if (std::strcmp(want, variants[v].name) == 0) best = v;
  }
  return variants[best];
}

const Variant& variant() {
  static const Variant v = choose();
  return v;
}

}  // namespace

void gram_accumulate(const double* X, int k, int r, double* G) { variant().gram(X, k, r, G); }
void tridiagonalize(double* G, int k, double* d, double* e) { variant().tridiag(G, k, d, e); }
unsigned tridiag_eigvals(double* d, double* e, int k) { return variant().eigvals(d, e, k); }
const char* isa_name() { return variant().name; }

}  // namespace rankscope::compact
