// Element shuffles for the randomised ESD (the scanner's randomize=True).
#pragma once

#include <cstdint>

namespace rankscope {

/// Writes a uniformly random permutation of the `n` elements of `src` (each `elem_size` bytes: 1, 2,
/// 4 or 8) to `dst`, which must not overlap `src`: Fisher–Yates driven by xoshiro256** seeded from
/// `seed` through splitmix64, with Lemire's unbiased bounded draws. Deterministic for a seed.
void shuffled_copy(const void* src, void* dst, int64_t n, int elem_size, uint64_t seed);

}  // namespace rankscope
