#include "markers.h"

#include "tensorflow/lite/micro/micro_log.h"

// noinline and an empty asm keep each marker a real, separate function that
// the compiler can neither drop nor merge with another.
#define KS_MARKER(name) \
  extern "C" __attribute__((noinline, used)) void name(void) { __asm__ volatile("" ::: "memory"); }
KS_MARKER(ks_marker_invoke_begin)
KS_MARKER(ks_marker_invoke_end)
KS_MARKER(ks_marker_op_begin)
KS_MARKER(ks_marker_op_end)

uint32_t OpMarkerProfiler::BeginEvent(const char* tag) {
  if (count_ < kMaxEvents) tags_[count_] = tag;
  ks_marker_op_begin();
  return static_cast<uint32_t>(count_++);
}

void OpMarkerProfiler::EndEvent(uint32_t) { ks_marker_op_end(); }

void OpMarkerProfiler::PrintOps() {
  const int n = count_ < kMaxEvents ? count_ : kMaxEvents;
  // One line per operator, numbered, so that the host reads their order back.
  MicroPrintf("Ops (%d):", n);
  for (int i = 0; i < n; ++i) MicroPrintf("  op %d %s", i, tags_[i]);
  count_ = 0;
}

namespace {
// 64 KiB below main()'s frame is far more than the application needs and far
// less than any host's or qemu's stack.
constexpr uintptr_t kPaintBytes = 64 * 1024;
// This function's own frame (well under 256 bytes) stays unpainted.
constexpr uintptr_t kUnpaintedBytes = 256;
constexpr uint8_t kPattern = 0xA5;
uintptr_t paint_top = 0;
}  // namespace

__attribute__((noinline)) void StackPaint() {
  paint_top = reinterpret_cast<uintptr_t>(__builtin_frame_address(0)) - kUnpaintedBytes;
  for (uintptr_t a = paint_top - kPaintBytes; a < paint_top; ++a) *reinterpret_cast<volatile uint8_t*>(a) = kPattern;
}

size_t StackUsedBytes() {
  if (paint_top == 0) return 0;
  uintptr_t a = paint_top - kPaintBytes;
  while (a < paint_top && *reinterpret_cast<volatile uint8_t*>(a) == kPattern) ++a;
  return static_cast<size_t>(paint_top - a + kUnpaintedBytes);
}
