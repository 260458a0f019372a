/* Markers for measuring the application on an emulated core.

   Built in only with -DKS_MARKERS=1 (tflm/Makefile's default, MARKERS=1).
   The marker functions do nothing; an emulator's execution trace sees them
   run, so the instructions between ks_marker_invoke_begin() and
   ks_marker_invoke_end() are exactly one Invoke(), and those between
   ks_marker_op_begin() and ks_marker_op_end() one operator, in the order
   OpMarkerProfiler prints. keras_shufflenet.micro.firmware counts them. */

#ifndef KERAS_SHUFFLENET_TFLM_MARKERS_H_
#define KERAS_SHUFFLENET_TFLM_MARKERS_H_

#include <cstddef>
#include <cstdint>

#include "tensorflow/lite/micro/micro_profiler_interface.h"

extern "C" {
void ks_marker_invoke_begin(void);
void ks_marker_invoke_end(void);
void ks_marker_op_begin(void);
void ks_marker_op_end(void);
}

// Calls the op markers around every operator TFLM runs and keeps the
// operators' names, which PrintOps() lists once, in execution order.
class OpMarkerProfiler : public tflite::MicroProfilerInterface {
 public:
  uint32_t BeginEvent(const char* tag) override;
  void EndEvent(uint32_t event_handle) override;
  // Prints "Ops: NAME,NAME,..." for the events recorded so far, then forgets them.
  void PrintOps();

 private:
  static constexpr int kMaxEvents = 512;
  const char* tags_[kMaxEvents] = {};
  int count_ = 0;
};

// Stack high-water mark: StackPaint() fills the stack below the caller with a
// pattern; StackUsedBytes() later finds how deep the stack reached.
void StackPaint();
size_t StackUsedBytes();

#endif  // KERAS_SHUFFLENET_TFLM_MARKERS_H_
