// avx2 variant of the compact kernels (see compact_impl.inl); block sizes tuned on Sapphire Rapids.
#define RS_COMPACT_ISA avx2
#define RS_GRAM_BI 4
#define RS_GRAM_BJ 3
#define RS_TRD_CB 2
#include "compact_impl.inl"
