// Per-thread scratch memory shared by the engine and the penalties.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace rankscope {

/// Scratch above this size is returned after each task instead of being kept per thread (32 MB).
constexpr size_t kKeepScratchBytes = size_t(32) << 20;

/// 64-byte aligned, growable, uninitialised scratch (the compact kernels want whole cache lines per
/// lane group). `get<T>(n)` returns room for n values of T, reusing the block when it is large enough.
struct ScratchBuffer {
  void* p = nullptr;
  size_t bytes = 0;
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  template <class T = double>
  T* get(size_t n) {
    const size_t need = std::max<size_t>(64, (n * sizeof(T) + 63) / 64 * 64);
    if (need > bytes) {
      std::free(p);
      p = std::aligned_alloc(64, need);
      bytes = p ? need : 0;
      if (!p) throw std::bad_alloc();  // MemoryError in Python
    }
    return static_cast<T*>(p);
  }
  /// Frees the block if it is above `keep` bytes.
  void shrink(size_t keep = kKeepScratchBytes) {
    if (bytes > keep) {
      std::free(p);
      p = nullptr;
      bytes = 0;
    }
  }
  ~ScratchBuffer() { std::free(p); }
};

}  // namespace rankscope
