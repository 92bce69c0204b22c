// generic variant of the compact kernels (see compact_impl.inl); block sizes tuned on Sapphire Rapids.
#define RS_COMPACT_ISA generic
#define RS_GRAM_BI 4
#define RS_GRAM_BJ 4
#define RS_TRD_CB 2
#include "compact_impl.inl"
