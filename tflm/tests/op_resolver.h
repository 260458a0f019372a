// The stock kernels that tests/kernel_test.cc runs the project's kernels
// against (their fallbacks); tflm/Makefile lists the TFLM sources from it.
#ifndef KERAS_SHUFFLENET_TFLM_TESTS_OP_RESOLVER_H_
#define KERAS_SHUFFLENET_TFLM_TESTS_OP_RESOLVER_H_

#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"

inline TfLiteStatus RegisterKernelTestOps(tflite::MicroMutableOpResolver<5>& resolver) {
  if (resolver.AddAdd() != kTfLiteOk) return kTfLiteError;
  if (resolver.AddConv2D() != kTfLiteOk) return kTfLiteError;
  if (resolver.AddMaxPool2D() != kTfLiteOk) return kTfLiteError;
  if (resolver.AddMean() != kTfLiteOk) return kTfLiteError;
  if (resolver.AddTranspose() != kTfLiteOk) return kTfLiteError;
  return kTfLiteOk;
}

#endif  // KERAS_SHUFFLENET_TFLM_TESTS_OP_RESOLVER_H_
