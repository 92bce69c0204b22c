// generic variant of the compact kernels (see compact_impl.inl); build flags set by CMake.
#define RS_COMPACT_ISA generic
#define RS_GRAM_BI 2
#define RS_GRAM_BJ 1
#define RS_TRD_CB 1
#include "compact_impl.inl"
