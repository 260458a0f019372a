/* What the project's kernels share: TFLM's requantization written for speed
   (and proven equal to it by tests/kernel_test.cc), and the hand-over to the
   stock kernel for the cases a kernel does not handle. */

#ifndef KERAS_SHUFFLENET_TFLM_KERNELS_KERNEL_COMMON_H_
#define KERAS_SHUFFLENET_TFLM_KERNELS_KERNEL_COMMON_H_

#include <cstdint>

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/kernels/internal/common.h"
#include "tensorflow/lite/micro/micro_common.h"

namespace keras_shufflenet {

#if TFLITE_SINGLE_ROUNDING
// A build with single rounding: TFLM's own function is already what it is.
inline int32_t Requantize(int32_t x, int32_t multiplier, int shift) {
  return tflite::MultiplyByQuantizedMultiplier(x, multiplier, shift);
}
#else
// tflite::MultiplyByQuantizedMultiplier (double rounding, TFLM's default):
// SaturatingRoundingDoublingHighMul(x << left, multiplier), then
// RoundingDivideByPOT(right). Two rewrites keep it exact and cheaper:
// - gemmlowp nudges a negative product by 1 - 2^30 and divides toward zero;
//   that equals adding 2^30 and shifting right arithmetically.
// - Its one saturating case needs multiplier == INT32_MIN, which
//   QuantizeMultiplier never returns (its multipliers lie in [2^30, 2^31)).
inline int32_t Requantize(int32_t x, int32_t multiplier, int shift) {
  const int left = shift > 0 ? shift : 0;
  const int right = shift > 0 ? 0 : -shift;
  // Shift as unsigned: TFLM's int32 shift wraps the same way, without the UB.
  const int32_t shifted = static_cast<int32_t>(static_cast<uint32_t>(x) << left);
  const int32_t high =
      static_cast<int32_t>((static_cast<int64_t>(shifted) * multiplier + (int64_t{1} << 30)) >> 31);
  const int32_t mask = static_cast<int32_t>((int64_t{1} << right) - 1);
  const int32_t threshold = (mask >> 1) + (high < 0 ? 1 : 0);
  return (high >> right) + ((high & mask) > threshold ? 1 : 0);
}
#endif

// The common case of Requantize in fewer instructions: a right shift of at
// least 1 (shift <= -1) and a multiplier above 2^30, as nearly every
// convolution and ADD has. The two roundings of TFLM's double rounding fold
// into one floor of (x * multiplier + rounding) / 2^(31 + right_shift), where
// rounding = 2^30 + 2^(30 + right_shift), less 2^31 when x < 0 (gemmlowp's
// RoundingDivideByPOT rounds ties away from zero, and x * multiplier < -2^30
// exactly when x < 0 for such multipliers). On a Cortex-M4: one SMLAL, three
// instructions for the sign, one shift.
struct FastRequantizer {
  int64_t rounding;
  int32_t multiplier;
  int32_t shift;  // right_shift - 1: the shift left after taking the high word.
};

inline bool IsFastRequantizable(int32_t multiplier, int shift) {
  return shift <= -1 && shift >= -31 && multiplier > (int32_t{1} << 30);
}

inline FastRequantizer MakeFastRequantizer(int32_t multiplier, int shift) {
  const int right_shift = -shift;
  return {(int64_t{1} << 30) + (int64_t{1} << (30 + right_shift)), multiplier, right_shift - 1};
}

inline int32_t RequantizeFast(int32_t x, const FastRequantizer& q) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  // GCC spends six instructions on the sign's 64-bit term; these are four.
  uint32_t low = static_cast<uint32_t>(q.rounding);
  int32_t high = static_cast<int32_t>(q.rounding >> 32);
  int32_t sign;
  __asm("smlal %[low], %[high], %[x], %[multiplier]\n\t"
        "asr %[sign], %[x], #31\n\t"
        "adds %[low], %[low], %[sign], lsl #31\n\t"
        "adc %[high], %[high], %[sign]"
        : [low] "+&r"(low), [high] "+&r"(high), [sign] "=&r"(sign)
        : [x] "r"(x), [multiplier] "r"(q.multiplier)
        : "cc");
  return high >> q.shift;
#else
  int64_t acc = q.rounding + static_cast<int64_t>(x) * q.multiplier;
  acc += static_cast<int64_t>(x >> 31) * (int64_t{1} << 31);  // Less 2^31 when x < 0.
  return static_cast<int32_t>(acc >> 32) >> q.shift;
#endif
}

// A project kernel's Init: its node data, a T in the arena's persistent part.
template <typename T>
void* InitNodeData(TfLiteContext* context, const char* buffer, size_t length) {
  return context->AllocatePersistentBuffer(context, sizeof(T));
}

// The project's registration of an op: the stock one (its builtin code,
// free and reset) with the project's Init, Prepare and Invoke.
inline TFLMRegistration ProjectRegistration(const TFLMRegistration& stock,
                                            void* (*init)(TfLiteContext*, const char*, size_t),
                                            TfLiteStatus (*prepare)(TfLiteContext*, TfLiteNode*),
                                            TfLiteStatus (*invoke)(TfLiteContext*, TfLiteNode*)) {
  TFLMRegistration registration = stock;
  registration.init = init;
  registration.prepare = prepare;
  registration.invoke = invoke;
  return registration;
}

// A case a project kernel does not handle goes to `stock`, the kernel it
// replaces. The stock kernel's node data is created only then, in Prepare, so
// a handled node costs no memory for it; `*stock_data` keeps it.
TfLiteStatus PrepareStock(const TFLMRegistration& stock, void** stock_data, TfLiteContext* context,
                          TfLiteNode* node);

// Runs the stock kernel's Invoke with the node data PrepareStock made.
TfLiteStatus InvokeStock(const TFLMRegistration& stock, void* stock_data, TfLiteContext* context,
                         TfLiteNode* node);

}  // namespace keras_shufflenet

#endif  // KERAS_SHUFFLENET_TFLM_KERNELS_KERNEL_COMMON_H_
